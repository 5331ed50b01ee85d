"""OpenAI's official Python SDK against `rft serve`, unchanged but for base_url: files, graders,
an RFT job followed to completion, its events and checkpoints, chat with the fine-tuned model
(plain and streamed), pause/resume/cancel, and the SDK's typed errors.

Usage: openai_flow.py BASE_URL API_KEY MODEL_DIR DATA_DIR  (run by crates/rft-cli/tests/serve.rs)
"""

import sys
import time

import openai
from openai import OpenAI

base_url, api_key, model_dir, data_dir = sys.argv[1:5]
client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
grader = {"type": "string_check", "name": "has_x", "operation": "like",
          "input": "{{ sample.output_text }}", "reference": "{{ item.target }}"}


def wait(job_id, statuses, limit=300):
    start = time.time()
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        assert time.time() - start < limit, f"{job_id} still {job.status}"
        time.sleep(0.3)


# Files, graders.
train = client.files.create(file=open(f"{data_dir}/train.jsonl", "rb"), purpose="fine-tune")
valid = client.files.create(file=open(f"{data_dir}/valid.jsonl", "rb"), purpose="fine-tune")
assert train.status == "processed" and train.filename == "train.jsonl", train
assert client.files.retrieve(train.id).bytes == train.bytes
assert client.files.content(train.id).read().startswith(b'{"messages"')
assert client.fine_tuning.alpha.graders.validate(grader=grader).grader is not None
run = client.fine_tuning.alpha.graders.run(grader=grader, model_sample="x marks", item={"target": "x"})
assert run.reward == 1.0 and run.metadata.errors.other_error is False, run
multi = {"type": "multi", "name": "mix", "graders": {"a": grader, "b": {"type": "text_similarity", "name": "sim",
         "input": "{{ sample.output_text }}", "reference": "{{ item.target }}",
         "evaluation_metric": "fuzzy_match"}}, "calculate_output": "0.5 * a + 0.5 * b"}
run = client.fine_tuning.alpha.graders.run(grader=multi, model_sample="x", item={"target": "x"})
assert abs(run.reward - 1.0) < 1e-9 and set(run.sub_rewards) == {"a", "b"}, run
# A model grader whose judge is this server itself (RFT_JUDGE_BASE_URL points at it): the
# judge's strict json_schema answer comes back through /v1/chat/completions.
judge = {"type": "score_model", "name": "judge", "model": model_dir, "range": [0, 1],
         "input": [{"role": "user", "content": "Score the answer '{{ sample.output_text }}'."}],
         "sampling_params": {"max_completions_tokens": 48, "seed": 1}}
run = client.fine_tuning.alpha.graders.run(grader=judge, model_sample="x", item={})
assert run.metadata.errors.model_grader_server_error is False, run
assert 0.0 <= run.reward <= 1.0, run
try:
    client.fine_tuning.alpha.graders.validate(grader={"type": "string_check", "name": "s"})
    raise AssertionError("an invalid grader was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400

# An RFT job, followed to completion.
hyper = {"batch_size": 2, "n_epochs": 1, "compute_multiplier": 0.5, "eval_interval": 1,
         "eval_samples": 2, "lora_rank": 4, "max_completion_tokens": 4}
job = client.fine_tuning.jobs.create(
    model=model_dir, training_file=train.id, validation_file=valid.id, seed=3, suffix="sdk",
    metadata={"owner": "sdk-test"},
    method={"type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": hyper}})
assert job.status == "validating_files", job
job = wait(job.id, ("succeeded", "failed"))
assert job.status == "succeeded", job.error
assert job.fine_tuned_model.startswith("ft:") and job.fine_tuned_model.endswith(job.id)
events = list(client.fine_tuning.jobs.list_events(job.id, limit=3))  # pages through all
assert any(e.type == "metrics" for e in events) and len({e.id for e in events}) == len(events)
metrics = [e for e in events if e.type == "metrics"][0].data
assert "train_reward_mean" in metrics["scores"] and "sampling" in metrics["timing"]["step"]
checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
assert checkpoints and checkpoints[0].fine_tuned_model_checkpoint.startswith(job.fine_tuned_model)
listed = client.fine_tuning.jobs.list(metadata={"owner": "sdk-test"})
assert [j.id for j in listed.data] == [job.id]
assert job.fine_tuned_model in [m.id for m in client.models.list()]

# Chat with the fine-tuned model and a checkpoint, plain and streamed.
for model in (job.fine_tuned_model, checkpoints[0].fine_tuned_model_checkpoint):
    chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say x"}],
                                          max_completion_tokens=5, n=2, seed=1)
    assert len(chat.choices) == 2 and chat.usage.completion_tokens > 0, chat
stream = client.chat.completions.create(model=job.fine_tuned_model, stream=True, seed=1, max_tokens=5,
                                        messages=[{"role": "user", "content": "Say x"}])
pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
plain = client.chat.completions.create(model=job.fine_tuned_model, seed=1, max_tokens=5,
                                       messages=[{"role": "user", "content": "Say x"}])
assert "".join(pieces) == plain.choices[0].message.content, (pieces, plain)

# Pause, resume, cancel.
long = client.fine_tuning.jobs.create(
    model=model_dir, training_file=train.id, validation_file=valid.id, seed=4,
    method={"type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters":
            dict(hyper, n_epochs=30, eval_interval=100, eval_samples=1)}})
wait(long.id, ("running",))
assert client.fine_tuning.jobs.pause(long.id).status == "paused"
assert client.fine_tuning.jobs.resume(long.id).status == "queued"
assert client.fine_tuning.jobs.cancel(long.id).status == "cancelled"
try:
    client.fine_tuning.jobs.resume(long.id)
    raise AssertionError("resumed a cancelled job")
except openai.BadRequestError:
    pass

# Evals: grade given samples, then sample the fine-tuned model.
def wait_run(run, eval_id):
    start = time.time()
    while run.status in ("queued", "in_progress"):
        assert time.time() - start < 120, run
        time.sleep(0.2)
        run = client.evals.runs.retrieve(run.id, eval_id=eval_id)
    return run


ev = client.evals.create(
    name="has-x", testing_criteria=[grader],
    data_source_config={"type": "custom", "include_sample_schema": True,
                        "item_schema": {"type": "object", "properties": {"target": {"type": "string"}}}})
assert ev.testing_criteria[0].name == "has_x" and "sample" in ev.data_source_config.schema_["properties"]
given = client.evals.runs.create(ev.id, name="given", data_source={"type": "jsonl", "source": {
    "type": "file_content", "content": [{"item": {"target": "x"}, "sample": {"output_text": "x!"}},
                                        {"item": {"target": "x"}, "sample": {"output_text": "no"}}]}})
given = wait_run(given, ev.id)
assert given.status == "completed" and given.result_counts.passed == 1, given
assert given.result_counts.failed == 1 and given.per_testing_criteria_results[0].passed == 1
items = client.evals.runs.output_items.list(given.id, eval_id=ev.id).data
assert sorted(i.status for i in items) == ["fail", "pass"] and items[0].results[0].score in (0.0, 1.0)
failing = client.evals.runs.output_items.list(given.id, eval_id=ev.id, status="fail").data
assert [i.datasource_item_id for i in failing] == [1]
sampled = client.evals.runs.create(ev.id, data_source={
    "type": "completions", "model": job.fine_tuned_model,
    "source": {"type": "file_content", "content": [{"item": {"target": "x", "q": "Say x"}}] * 3},
    "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{ item.q }}"}]},
    "sampling_params": {"max_completion_tokens": 4, "seed": 1, "temperature": 1.0}})
sampled = wait_run(sampled, ev.id)
assert sampled.status == "completed" and sampled.result_counts.total == 3, sampled
assert sampled.per_model_usage[0].invocation_count == 3
item = client.evals.runs.output_items.list(sampled.id, eval_id=ev.id).data[0]
assert item.sample.input[0].content == "Say x" and isinstance(item.sample.output[0].content, str)
assert [e.id for e in client.evals.list().data] == [ev.id]
assert client.evals.update(ev.id, name="renamed").name == "renamed"
assert client.evals.runs.delete(given.id, eval_id=ev.id).deleted
assert client.evals.delete(ev.id).deleted

# Typed errors.
for call in (lambda: client.fine_tuning.jobs.retrieve("ftjob-missing"),
             lambda: client.files.retrieve("file-missing")):
    try:
        call()
        raise AssertionError("an unknown id was found")
    except openai.NotFoundError:
        pass
try:
    OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
    raise AssertionError("a wrong key was accepted")
except openai.AuthenticationError:
    pass
print("openai SDK flow: OK")
