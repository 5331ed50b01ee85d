//! The typed API objects serialize to OpenAI's JSON, field for field: the shapes the SDK reads.

use rft_types::api::chat::{ChatChunk, ChatUsage, ChunkChoice};
use rft_types::api::common::{Deleted, DeletedId, List, Model};
use rft_types::api::eval::{EvalRun, RunDataSource, RunStatus};
use rft_types::api::file::{FileObject, FilePurpose, FileStatus};
use serde_json::json;

#[test]
fn lists_carry_cursor_ids_except_event_lists() {
    let page = List::with_cursor(vec![Model::new("a", 1, "openrft")], true, |m: &Model| &m.id);
    assert_eq!(
        serde_json::to_value(&page).unwrap(),
        json!({"object": "list", "data": [{"id": "a", "object": "model", "created": 1,
               "owned_by": "openrft"}], "has_more": true, "first_id": "a", "last_id": "a"})
    );
    let empty = List::<Model>::with_cursor(Vec::new(), false, |m| &m.id);
    assert_eq!(
        serde_json::to_value(&empty).unwrap(),
        json!({"object": "list", "data": [], "has_more": false, "first_id": null, "last_id": null})
    );
    let events = List::<Model>::plain(Vec::new(), false);
    assert_eq!(
        serde_json::to_value(&events).unwrap(),
        json!({"object": "list", "data": [], "has_more": false})
    );
}

#[test]
fn deletions_name_their_id_as_each_kind_does() {
    let file = Deleted {
        id: DeletedId::Id("file-1".into()),
        object: "file".into(),
        deleted: true,
    };
    assert_eq!(
        serde_json::to_value(&file).unwrap(),
        json!({"id": "file-1", "object": "file", "deleted": true})
    );
    let run = Deleted {
        id: DeletedId::Run("evalrun_1".into()),
        object: "eval.run.deleted".into(),
        deleted: true,
    };
    assert_eq!(
        serde_json::to_value(&run).unwrap(),
        json!({"run_id": "evalrun_1", "object": "eval.run.deleted", "deleted": true})
    );
}

#[test]
fn stream_chunks_have_openais_delta_shapes() {
    let chunk = |choices, usage| ChatChunk {
        id: "c".into(),
        object: "chat.completion.chunk".into(),
        created: 0,
        model: "m".into(),
        system_fingerprint: "openrft".into(),
        choices,
        usage,
    };
    let role = serde_json::to_value(chunk(vec![ChunkChoice::role(0)], None)).unwrap();
    assert_eq!(
        role["choices"][0],
        json!({"index": 0, "delta": {"role": "assistant", "content": "", "refusal": null},
               "logprobs": null, "finish_reason": null})
    );
    assert_eq!(role["usage"], json!(null));
    let text =
        serde_json::to_value(chunk(vec![ChunkChoice::text(1, "hi".into(), None)], None)).unwrap();
    assert_eq!(text["choices"][0]["delta"], json!({"content": "hi"}));
    let end = serde_json::to_value(chunk(vec![ChunkChoice::finish(1, "stop")], None)).unwrap();
    assert_eq!(
        end["choices"][0],
        json!({"index": 1, "delta": {}, "logprobs": null, "finish_reason": "stop"})
    );
    let usage = serde_json::to_value(chunk(Vec::new(), Some(ChatUsage::new(3, 4)))).unwrap();
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})
    );
}

#[test]
fn files_and_runs_round_trip() {
    let file = FileObject {
        id: "file-1".into(),
        object: "file".into(),
        bytes: 3,
        created_at: 5,
        filename: "a.jsonl".into(),
        purpose: FilePurpose::FineTune,
        status: FileStatus::Processed,
        expires_at: None,
        status_details: None,
    };
    let value = serde_json::to_value(&file).unwrap();
    assert_eq!(value["purpose"], "fine-tune");
    assert_eq!(value["status"], "processed");
    assert_eq!(serde_json::from_value::<FileObject>(value).unwrap(), file);
    assert_eq!(FilePurpose::parse("user_data"), Some(FilePurpose::UserData));
    assert_eq!(FilePurpose::parse("../x"), None);
    let run: EvalRun = serde_json::from_value(json!({
        "id": "evalrun_1", "object": "eval.run", "eval_id": "eval_1", "status": "in_progress",
        "model": "", "name": "", "created_at": 1, "report_url": null,
        "result_counts": {"total": 0, "errored": 0, "failed": 0, "passed": 0},
        "per_model_usage": null, "per_testing_criteria_results": null,
        "data_source": {"type": "jsonl", "source": {"type": "file_content", "content": []}},
        "metadata": {}, "error": null,
    }))
    .unwrap();
    assert_eq!(run.status, RunStatus::InProgress);
    let source: RunDataSource = serde_json::from_value(run.data_source.clone()).unwrap();
    assert!(matches!(source, RunDataSource::Jsonl { .. }));
}
