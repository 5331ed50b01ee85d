//! `/v1/files`: upload (multipart), list, retrieve, delete, content.
//!
//! Contents live in the data folder under the file's id (never under a name the client chose),
//! written durably before the object is recorded. `fine-tune` uploads are checked line by line
//! at upload: the object is `processed`, or `error` with the first problem in `status_details`
//! (file, line, field), and a job naming it fails at `validating_files` with the same message.

use std::collections::HashMap;

use axum::extract::{Multipart, Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rft_types::api::common::{Deleted, DeletedId, List};
use rft_types::api::file::{FileObject, FilePurpose, FileStatus};

use crate::{new_id, now, parse_limit, parse_order, ApiError, SharedState};

/// Largest form field other than `file` (purpose, expires_after[…]).
const MAX_FIELD_BYTES: usize = 4096;
/// Most form fields.
const MAX_FIELDS: usize = 16;

/// Deletes a partly written upload unless it was kept.
struct PartialUpload(Option<std::path::PathBuf>);

impl Drop for PartialUpload {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// `POST /v1/files`: the file part streams to disk as it arrives (counted against
/// `max_upload_bytes`), so an upload never sits in memory.
pub(crate) async fn upload(
    State(state): State<SharedState>,
    mut multipart: Multipart,
) -> Result<Json<FileObject>, ApiError> {
    use tokio::io::AsyncWriteExt;
    let id = new_id("file-");
    let final_path = state.store.file_path(&id);
    let part_path = final_path.with_extension("part");
    let mut partial = PartialUpload(None);
    let mut content: Option<(String, usize)> = None;
    let mut fields: HashMap<String, String> = HashMap::new();
    let limit = state.config.max_upload_bytes;
    let malformed = |e: axum::extract::multipart::MultipartError| -> ApiError {
        ApiError::bad_request(format!(
            "could not read the multipart body: {}",
            e.body_text()
        ))
    };
    let mut count = 0;
    while let Some(mut field) = multipart.next_field().await.map_err(malformed)? {
        count += 1;
        if count > MAX_FIELDS {
            return Err(ApiError::bad_request(format!(
                "the multipart body has more than {MAX_FIELDS} fields"
            )));
        }
        let name = field.name().unwrap_or_default().to_owned();
        if name == "file" {
            if content.is_some() {
                return Err(ApiError::bad_request("send one `file` part").with_param("file"));
            }
            let filename = field.file_name().unwrap_or("upload").to_owned();
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&part_path)
                .await
                .map_err(|e| ApiError::internal(format!("cannot create the upload: {e}")))?;
            partial.0 = Some(part_path.clone());
            let mut written = 0usize;
            while let Some(chunk) = field.chunk().await.map_err(malformed)? {
                written += chunk.len();
                if written > limit {
                    return Err(ApiError {
                        status: axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                        message: format!(
                            "The file is over this server's upload limit of {limit} bytes."
                        ),
                        param: Some("file".into()),
                        code: Some("file_too_large".into()),
                    });
                }
                file.write_all(&chunk)
                    .await
                    .map_err(|e| ApiError::internal(format!("cannot write the upload: {e}")))?;
            }
            file.sync_all()
                .await
                .map_err(|e| ApiError::internal(format!("cannot write the upload: {e}")))?;
            content = Some((filename, written));
        } else {
            let mut text = Vec::new();
            while let Some(chunk) = field.chunk().await.map_err(malformed)? {
                text.extend_from_slice(&chunk);
                if text.len() > MAX_FIELD_BYTES {
                    return Err(ApiError::bad_request(format!(
                        "field '{name}' is longer than {MAX_FIELD_BYTES} bytes"
                    ))
                    .with_param(name));
                }
            }
            let text = String::from_utf8(text).map_err(|_| {
                ApiError::bad_request(format!("field '{name}' is not UTF-8 text"))
                    .with_param(name.clone())
            })?;
            fields.insert(name, text);
        }
    }
    let (filename, size) = content.ok_or_else(|| {
        ApiError::bad_request("Missing the `file` part of the multipart body.").with_param("file")
    })?;
    let purpose = fields.get("purpose").map(String::as_str).ok_or_else(|| {
        ApiError::bad_request("Missing required parameter: 'purpose'.").with_param("purpose")
    })?;
    let purpose = FilePurpose::parse(purpose).ok_or_else(|| {
        ApiError::bad_request(format!(
            "Invalid value for 'purpose': '{purpose}'. Expected one of: {}.",
            FilePurpose::ALL.map(|(name, _)| name).join(", ")
        ))
        .with_param("purpose")
    })?;
    let created_at = now();
    let expires_at = match (
        fields.get("expires_after[anchor]"),
        fields.get("expires_after[seconds]"),
    ) {
        (None, None) => None,
        (Some(anchor), Some(seconds)) => {
            if anchor != "created_at" {
                return Err(
                    ApiError::bad_request("expires_after[anchor] must be 'created_at'")
                        .with_param("expires_after[anchor]"),
                );
            }
            match seconds.parse::<i64>() {
                Ok(s) if (3600..=2_592_000).contains(&s) => Some(created_at + s),
                _ => {
                    return Err(ApiError::bad_request(
                        "expires_after[seconds] must be an integer from 3600 to 2592000",
                    )
                    .with_param("expires_after[seconds]"))
                }
            }
        }
        _ => {
            return Err(ApiError::bad_request(
                "expires_after needs both expires_after[anchor] and expires_after[seconds]",
            )
            .with_param("expires_after"))
        }
    };
    let checked = if purpose == FilePurpose::FineTune {
        let (name, path) = (filename.clone(), part_path.clone());
        tokio::task::spawn_blocking(move || check_fine_tune(&name, &path))
            .await
            .map_err(|e| ApiError::internal(format!("upload check failed: {e}")))?
    } else {
        Ok(())
    };
    let (status, status_details) = match checked {
        Ok(()) => (FileStatus::Processed, None),
        Err(message) => (FileStatus::Error, Some(message)),
    };
    let object = FileObject {
        id: id.clone(),
        object: "file".into(),
        bytes: size as u64,
        created_at,
        filename,
        purpose,
        status,
        expires_at,
        status_details,
    };
    let store = state.store.clone();
    let blobs = state.blobs.clone();
    let stored = object.clone();
    tokio::task::spawn_blocking(move || -> Result<(), ApiError> {
        // Renamed into place, and its folder synced, before the object that names it exists.
        std::fs::rename(&part_path, &final_path)
            .map_err(|e| ApiError::internal(format!("cannot store the upload: {e}")))?;
        rft_types::paths::sync_parent(&final_path)
            .map_err(|e| ApiError::internal(format!("cannot store the upload: {e}")))?;
        // In the blob store (S3) before the object exists: a worker on another machine that
        // sees the file can always fetch it.
        if !crate::job_storage::blobs_are_local(&store, &blobs) {
            blobs
                .put_file(&format!("files/{}", stored.id), &final_path)
                .map_err(|e| {
                    tracing::error!("cannot store the upload in the blob store: {e}");
                    ApiError::unavailable(
                        "The blob store did not take the upload; retry it shortly.",
                    )
                })?;
        }
        store.insert_object("file", None, &stored)?;
        Ok(())
    })
    .await
    .map_err(|e| ApiError::internal(format!("upload task failed: {e}")))??;
    partial.0 = None;
    Ok(Json(object))
}

/// The first problem of an RFT dataset, with its line and field; `Ok` when every line is a
/// valid row. Rows are parsed as the trainer will parse them, one line at a time.
fn check_fine_tune(filename: &str, path: &std::path::Path) -> Result<(), String> {
    use std::io::BufRead;
    if !filename.ends_with(".jsonl") {
        return Err(format!(
            "{filename}: fine-tuning files must be JSONL (one JSON object per line, named *.jsonl)"
        ));
    }
    let file = std::fs::File::open(path)
        .map_err(|_| format!("{filename}: the upload could not be read back"))?;
    let mut rows = 0;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|_| format!("{filename}:{}: the file is not UTF-8 text", i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        rft_types::DatasetRow::from_json_line(&line)
            .map_err(|e| format!("{filename}:{}: {e}", i + 1))?;
        rows += 1;
    }
    if rows == 0 {
        return Err(format!("{filename}: the file has no rows"));
    }
    Ok(())
}

fn existing(state: &SharedState, id: &str) -> Result<FileObject, ApiError> {
    state
        .store
        .get_object("file", id)?
        .ok_or_else(|| ApiError::not_found("file", id).with_param("file_id"))
}

/// `GET /v1/files`.
pub(crate) async fn list(
    State(state): State<SharedState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<List<FileObject>>, ApiError> {
    let limit = parse_limit(query.get("limit").map(String::as_str), 10_000, 10_000)?;
    let descending = parse_order(query.get("order").map(String::as_str), true)?;
    let body = match query.get("purpose") {
        Some(purpose) => vec![rft_store::BodyFilter::Equals {
            field: "purpose",
            value: purpose,
        }],
        None => Vec::new(),
    };
    let (data, has_more) = state.store.list_objects(
        "file",
        &rft_store::ListQuery {
            descending,
            after: query.get("after").map(String::as_str),
            limit,
            body,
            ..Default::default()
        },
    )?;
    Ok(Json(List::with_cursor(data, has_more, |f: &FileObject| {
        &f.id
    })))
}

/// `GET /v1/files/{file_id}`.
pub(crate) async fn retrieve(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Json<FileObject>, ApiError> {
    existing(&state, &id).map(Json)
}

/// `DELETE /v1/files/{file_id}`.
pub(crate) async fn delete(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    existing(&state, &id)?;
    state.store.delete(&id)?;
    state.store.remove_blob(&id)?;
    if !crate::job_storage::blobs_are_local(&state.store, &state.blobs) {
        if let Err(e) = state.blobs.delete(&format!("files/{id}")) {
            tracing::warn!("file {id}: its content stays in the blob store: {e}");
        }
    }
    Ok(Json(Deleted {
        id: DeletedId::Id(id),
        object: "file".into(),
        deleted: true,
    }))
}

/// `GET /v1/files/{file_id}/content`.
pub(crate) async fn content(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let file = existing(&state, &id)?;
    // A file uploaded through another API process comes from the blob store (off the async
    // threads: it may be large).
    let (store, blobs, file_id) = (state.store.clone(), state.blobs.clone(), id.clone());
    tokio::task::spawn_blocking(move || crate::job_storage::ensure_file(&store, &blobs, &file_id))
        .await
        .map_err(|e| ApiError::internal(format!("the content fetch stopped: {e}")))?
        .map_err(|e| {
            tracing::error!("cannot fetch the content of {id}: {e}");
            ApiError::internal(format!("cannot read the content of {id}"))
        })?;
    let path = state.store.file_path(&id);
    let reader = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::internal(format!("cannot read the content of {id}: {e}")))?;
    // Streamed in chunks: a 512 MB file is never held in memory.
    let chunks = futures_util::stream::unfold(reader, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buffer = vec![0u8; 64 * 1024];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(n) => {
                buffer.truncate(n);
                Some((
                    Ok::<_, std::io::Error>(axum::body::Bytes::from(buffer)),
                    file,
                ))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    let bytes = axum::body::Body::from_stream(chunks);
    let filename = &file.filename;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"{}\"",
                    filename.replace(['"', '\\', '\r', '\n'], "_")
                ),
            ),
        ],
        bytes,
    )
        .into_response())
}
