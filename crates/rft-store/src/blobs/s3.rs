//! The S3 backend: objects under a prefix of a bucket of any S3-compatible store, through
//! `object_store` (request signing and TLS on `ring`), each request retried with exponential
//! backoff. `object_store` is async and this store is not, so each request is spawned on the
//! backend's own small runtime and awaited through a channel ([`Bridge`]); large files move one
//! part or one batch of chunks per trip, never whole.

use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{mpsc, Arc, Once};
use std::time::Duration;

use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};
use sha2::{Digest, Sha256};

use super::local::{hex, io_error};
use super::{check_key, invalid_key, shown, too_large, BlobError, Fetched, CHUNK_BYTES};

/// The size of one multipart part: S3 wants at least 5 MiB for all but the last.
const PART_BYTES: usize = 8 << 20;

/// How to reach an S3-compatible store, given explicitly so that tests and embedders need not
/// touch the process-wide environment; [`Blobs::open`](super::Blobs::open) fills it from the
/// usual `AWS_*` variables.
#[derive(Clone)]
pub struct S3Options {
    /// `http(s)://host:port` of an S3-compatible server (MinIO, moto, R2…); `None` for AWS.
    /// With an endpoint, requests are path-style (`endpoint/bucket/key`), which such servers
    /// expect.
    pub endpoint: Option<String>,
    /// The signing region (`us-east-1` when unsure: S3-compatible servers accept it).
    pub region: String,
    /// The access key id; `None` falls back to the instance's or container's credentials.
    pub access_key: Option<String>,
    /// The secret access key: never displayed, logged or put in an error.
    pub secret_key: Option<String>,
    /// A session token for temporary credentials.
    pub session_token: Option<String>,
    /// Allows `http://` endpoints; a loopback endpoint is allowed either way.
    pub allow_http: bool,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            endpoint: None,
            region: "us-east-1".to_owned(),
            access_key: None,
            secret_key: None,
            session_token: None,
            allow_http: false,
        }
    }
}

impl S3Options {
    /// The S3 settings in the environment, read the way AWS's own tools read them.
    pub(super) fn from_env() -> S3Options {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let endpoint = var("AWS_ENDPOINT_URL").or_else(|| var("AWS_ENDPOINT"));
        let region = var("AWS_REGION")
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".to_owned());
        let allow_http = var("AWS_ALLOW_HTTP")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true") || v.trim() == "1");
        S3Options {
            endpoint,
            region,
            access_key: var("AWS_ACCESS_KEY_ID"),
            secret_key: var("AWS_SECRET_ACCESS_KEY"),
            session_token: var("AWS_SESSION_TOKEN"),
            allow_http,
        }
    }
}

impl fmt::Debug for S3Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |secret: &Option<String>| secret.as_ref().map(|_| "[redacted]");
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("secret_key", &shown(&self.secret_key))
            .field("session_token", &shown(&self.session_token))
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

#[derive(Clone)]
pub(super) struct S3Backend {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    /// The key prefix inside the bucket, without slashes at either end; empty for none.
    prefix: String,
    options: S3Options,
    /// Whether the client also reads the other `AWS_*` variables (web identity, container
    /// credentials…): true only when configured from the environment by `Blobs::open`.
    inherit_env: bool,
    runtime: Arc<Bridge>,
}

impl S3Backend {
    pub(super) fn new(
        bucket: &str,
        prefix: &str,
        options: S3Options,
        inherit_env: bool,
    ) -> Result<S3Backend, BlobError> {
        check_bucket(bucket)?;
        let prefix = prefix.trim_end_matches('/');
        if !prefix.is_empty() {
            if let Err(BlobError::InvalidKey { reason, .. }) = check_key(prefix) {
                return Err(BlobError::Config(format!(
                    "invalid S3 prefix {:?}: {reason}",
                    shown(prefix)
                )));
            }
        }
        let retry = default_retry();
        Ok(S3Backend {
            store: build_store(bucket, &options, &retry, inherit_env)?,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            options,
            inherit_env,
            runtime: Arc::new(Bridge::new()?),
        })
    }

    /// The same store with other retry settings; clones share the runtime.
    pub(super) fn with_retry(
        &self,
        max_retries: usize,
        timeout: Duration,
    ) -> Result<S3Backend, BlobError> {
        let retry = retry_config(max_retries, timeout);
        let store = build_store(&self.bucket, &self.options, &retry, self.inherit_env)?;
        Ok(S3Backend {
            store,
            ..self.clone()
        })
    }

    pub(super) fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    pub(super) fn put(&self, key: &str, bytes: &[u8]) -> Result<(), BlobError> {
        let path = self.path(key)?;
        let store = self.store.clone();
        let payload = PutPayload::from(bytes.to_vec());
        self.run(key, async move { store.put(&path, payload).await })?
            .map(|_| ())
            .map_err(|e| self.remote(key, e))
    }

    pub(super) fn get(&self, key: &str, max_bytes: u64) -> Result<Option<Vec<u8>>, BlobError> {
        let path = self.path(key)?;
        let store = self.store.clone();
        let result = match self.run(key, async move { store.get(&path).await })? {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.remote(key, e)),
        };
        if result.meta.size > max_bytes {
            return Err(too_large(key, max_bytes));
        }
        let bytes = self
            .run(key, async move { result.bytes().await })?
            .map_err(|e| self.remote(key, e))?;
        if bytes.len() as u64 > max_bytes {
            return Err(too_large(key, max_bytes));
        }
        Ok(Some(bytes.to_vec()))
    }

    pub(super) fn exists(&self, key: &str) -> Result<bool, BlobError> {
        let path = self.path(key)?;
        let store = self.store.clone();
        match self.run(key, async move { store.head(&path).await })? {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.remote(key, e)),
        }
    }

    pub(super) fn delete(&self, key: &str) -> Result<(), BlobError> {
        let path = self.path(key)?;
        let store = self.store.clone();
        match self.run(key, async move { store.delete(&path).await })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.remote(key, e)),
        }
    }

    /// Deletes the listed blobs of `prefix`, in bulk requests where the store has them.
    pub(super) fn delete_all(
        &self,
        prefix: &str,
        listed: &[(String, u64)],
    ) -> Result<(), BlobError> {
        let paths = listed
            .iter()
            .map(|(key, _)| self.path(key))
            .collect::<Result<Vec<_>, _>>()?;
        let store = self.store.clone();
        self.run(prefix, async move {
            let locations = futures_util::stream::iter(paths.into_iter().map(Ok)).boxed();
            let mut deleted = store.delete_stream(locations);
            while let Some(result) = deleted.next().await {
                match result {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })?
        .map_err(|e| self.remote(prefix, e))
    }

    /// Every object under `prefix/` (under the whole store prefix for ""), as (key, size).
    pub(super) fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, BlobError> {
        let base = if prefix.is_empty() {
            (!self.prefix.is_empty()).then(|| self.prefix.clone())
        } else {
            Some(self.full_key(prefix))
        };
        let base = base
            .map(|b| {
                ObjectPath::parse(b).map_err(|_| invalid_key(prefix, "not a valid object path"))
            })
            .transpose()?;
        let store = self.store.clone();
        let metas = self
            .run(prefix, async move {
                let mut stream = store.list(base.as_ref());
                let mut metas = Vec::new();
                while let Some(meta) = stream.next().await {
                    metas.push(meta?);
                }
                Ok::<_, object_store::Error>(metas)
            })?
            .map_err(|e| self.remote(prefix, e))?;
        let mut listed = Vec::with_capacity(metas.len());
        for meta in metas {
            let location: &str = meta.location.as_ref();
            let key = if self.prefix.is_empty() {
                Some(location)
            } else {
                location
                    .strip_prefix(self.prefix.as_str())
                    .and_then(|rest| rest.strip_prefix('/'))
            };
            if let Some(key) = key {
                listed.push((key.to_owned(), meta.size));
            }
        }
        Ok(listed)
    }

    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    /// The object path of a checked key.
    fn path(&self, key: &str) -> Result<ObjectPath, BlobError> {
        ObjectPath::parse(self.full_key(key))
            .map_err(|_| invalid_key(key, "not a valid object path"))
    }

    /// Runs one request on the store's own runtime and waits for it, from any thread.
    fn run<F>(&self, key: &str, future: F) -> Result<F::Output, BlobError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.run(future).ok_or_else(|| BlobError::Remote {
            key: shown(key),
            message: "the blob store's I/O task stopped before answering".to_owned(),
        })
    }

    /// An object store error as a [`BlobError::Remote`], with its causes and without secrets.
    fn remote(&self, key: &str, error: object_store::Error) -> BlobError {
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        let secrets: Vec<&str> = [&self.options.secret_key, &self.options.session_token]
            .into_iter()
            .filter_map(|s| s.as_deref())
            .collect();
        BlobError::Remote {
            key: shown(key),
            message: redact(&message, &secrets),
        }
    }

    /// Uploads a file, at most two parts in memory at a time; returns its length and SHA-256.
    pub(super) fn put_file(&self, key: &str, path: &Path) -> Result<(u64, String), BlobError> {
        let object = self.path(key)?;
        let mut file = File::open(path).map_err(|e| io_error(path, e))?;
        let mut hasher = Sha256::new();
        let first = read_part(&mut file, path)?;
        let second = if first.len() == PART_BYTES {
            read_part(&mut file, path)?
        } else {
            Vec::new()
        };
        if second.is_empty() {
            hasher.update(&first);
            let size = first.len() as u64;
            let store = self.store.clone();
            let payload = PutPayload::from(first);
            self.run(key, async move { store.put(&object, payload).await })?
                .map_err(|e| self.remote(key, e))?;
            return Ok((size, hex(&hasher.finalize())));
        }
        let store = self.store.clone();
        let mut upload = self
            .run(key, async move { store.put_multipart(&object).await })?
            .map_err(|e| self.remote(key, e))?;
        let sent = (|| {
            let mut size = 0u64;
            let mut part = first;
            let mut next = second;
            while !part.is_empty() {
                hasher.update(&part);
                size += part.len() as u64;
                let sending = upload.put_part(PutPayload::from(part));
                self.run(key, sending)?.map_err(|e| self.remote(key, e))?;
                part = next;
                next = if part.is_empty() {
                    Vec::new()
                } else {
                    read_part(&mut file, path)?
                };
            }
            Ok::<_, BlobError>(size)
        })();
        let size = match sent {
            Ok(size) => size,
            Err(e) => {
                self.abort(key, upload);
                return Err(e);
            }
        };
        let (upload, completed) = self.run(key, async move {
            let completed = upload.complete().await;
            (upload, completed)
        })?;
        if let Err(e) = completed {
            self.abort(key, upload);
            return Err(self.remote(key, e));
        }
        Ok((size, hex(&hasher.finalize())))
    }

    /// Aborts a failed multipart upload so that no part lingers (and is billed) in the bucket.
    fn abort(&self, key: &str, mut upload: Box<dyn MultipartUpload>) {
        match self.run(key, async move { upload.abort().await }) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let error = self.remote(key, e);
                tracing::warn!(%error, "could not abort a multipart upload");
            }
            Err(error) => tracing::warn!(%error, "could not abort a multipart upload"),
        }
    }

    /// Streams an object into `out`, a batch of chunks per trip to the runtime.
    pub(super) fn download(
        &self,
        key: &str,
        out: &mut File,
        out_path: &Path,
        limit: u64,
    ) -> Result<Fetched, BlobError> {
        let object = self.path(key)?;
        let store = self.store.clone();
        let result = match self.run(key, async move { store.get(&object).await })? {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(Fetched::Missing),
            Err(e) => return Err(self.remote(key, e)),
        };
        if result.meta.size > limit {
            return Ok(Fetched::OverLimit);
        }
        let mut stream = result.into_stream();
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        loop {
            let (back, batch) = self.run(key, async move {
                let mut batch = Vec::new();
                while batch.len() < CHUNK_BYTES {
                    match stream.next().await {
                        Some(Ok(chunk)) => batch.extend_from_slice(&chunk),
                        Some(Err(e)) => return (stream, Err(e)),
                        None => break,
                    }
                }
                (stream, Ok(batch))
            })?;
            stream = back;
            let batch = batch.map_err(|e| self.remote(key, e))?;
            if batch.is_empty() {
                break;
            }
            size += batch.len() as u64;
            if size > limit {
                return Ok(Fetched::OverLimit);
            }
            hasher.update(&batch);
            out.write_all(&batch).map_err(|e| io_error(out_path, e))?;
        }
        Ok(Fetched::Blob {
            size,
            sha256: hex(&hasher.finalize()),
        })
    }
}

/// The S3 backend's own runtime. Dropped without blocking (`shutdown_background`), because the
/// last `Blobs` may well be dropped inside an async handler, where a blocking drop panics.
struct Bridge {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Bridge {
    fn new() -> Result<Bridge, BlobError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_io()
            .enable_time()
            .thread_name("rft-blobs")
            .build()
            .map_err(|e| {
                BlobError::Config(format!("cannot start the blob store's I/O threads: {e}"))
            })?;
        Ok(Bridge {
            runtime: Some(runtime),
        })
    }

    /// Spawns `future` on the runtime and blocks this thread (not the runtime) on its answer;
    /// `None` if the task died (a panic inside the client) before answering.
    fn run<F>(&self, future: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let runtime = self.runtime.as_ref()?;
        let (sender, receiver) = mpsc::channel();
        runtime.spawn(async move {
            let _ = sender.send(future.await);
        });
        receiver.recv().ok()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// S3's bucket naming rules, loosely: enough that a bucket cannot smuggle a path or a host.
fn check_bucket(bucket: &str) -> Result<(), BlobError> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && bucket
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && bucket
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(BlobError::Config(format!(
            "invalid S3 bucket name {:?}: 3 to 63 lowercase letters, digits, '-' or '.'",
            shown(bucket)
        )))
    }
}

/// Reads up to one part: fewer bytes only at the end of the file.
fn read_part(file: &mut File, path: &Path) -> Result<Vec<u8>, BlobError> {
    let mut part = Vec::with_capacity(PART_BYTES);
    file.take(PART_BYTES as u64)
        .read_to_end(&mut part)
        .map_err(|e| io_error(path, e))?;
    Ok(part)
}

/// The default retries: enough to ride out a store's brief hiccup, bounded so that a worker
/// notices a dead store within a minute.
fn default_retry() -> RetryConfig {
    retry_config(5, Duration::from_secs(60))
}

fn retry_config(max_retries: usize, timeout: Duration) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries,
        retry_timeout: timeout,
    }
}

/// reqwest's TLS is built without a bundled crypto provider (to keep `aws-lc-rs` out); ring's is
/// installed as the process default, unless the program installed one already.
fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn build_store(
    bucket: &str,
    options: &S3Options,
    retry: &RetryConfig,
    inherit_env: bool,
) -> Result<Arc<dyn ObjectStore>, BlobError> {
    install_crypto_provider();
    let mut builder = if inherit_env {
        AmazonS3Builder::from_env()
    } else {
        AmazonS3Builder::new()
    };
    let loopback = options
        .endpoint
        .as_deref()
        .is_some_and(is_loopback_endpoint);
    builder = builder
        .with_bucket_name(bucket)
        .with_region(options.region.as_str())
        .with_allow_http(options.allow_http || loopback)
        .with_retry(retry.clone());
    if let Some(endpoint) = &options.endpoint {
        builder = builder
            .with_endpoint(endpoint.as_str())
            .with_virtual_hosted_style_request(false);
    }
    if let Some(access_key) = &options.access_key {
        builder = builder.with_access_key_id(access_key.as_str());
    }
    if let Some(secret_key) = &options.secret_key {
        builder = builder.with_secret_access_key(secret_key.as_str());
    }
    if let Some(token) = &options.session_token {
        builder = builder.with_token(token.as_str());
    }
    let secrets: Vec<&str> = [&options.secret_key, &options.session_token]
        .into_iter()
        .filter_map(|s| s.as_deref())
        .collect();
    let store = builder
        .build()
        .map_err(|e| BlobError::Config(redact(&e.to_string(), &secrets)))?;
    Ok(Arc::new(store))
}

/// Whether an endpoint URL points at this machine, where plain HTTP exposes nothing.
fn is_loopback_endpoint(endpoint: &str) -> bool {
    let rest = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = if let Some(bracketed) = host_port.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Takes credentials out of an error message: the known secret values, any `Authorization`
/// header, and the query of any URL that carries a signature (presigned URLs put
/// `X-Amz-Signature`, `X-Amz-Credential` and `X-Amz-Security-Token` there).
fn redact(message: &str, secrets: &[&str]) -> String {
    let mut text = message.to_owned();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(secret, "[redacted]");
    }
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let lower = line.to_ascii_lowercase();
        if let Some(at) = lower.find("authorization") {
            let end = at + "authorization".len();
            out.push_str(&line[..end]);
            out.push_str(": [redacted]");
            continue;
        }
        let words: Vec<String> = line.split(' ').map(redact_word).collect();
        out.push_str(&words.join(" "));
    }
    out
}

fn redact_word(word: &str) -> String {
    let lower = word.to_ascii_lowercase();
    let signed = ["x-amz-", "signature", "credential", "token", "sig="]
        .iter()
        .any(|marker| lower.contains(marker));
    if !signed {
        return word.to_owned();
    }
    match word.find('?') {
        Some(at) => format!("{}?[redacted]", &word[..at]),
        None if lower.contains("x-amz-") && word.contains('=') => "[redacted]".to_owned(),
        None => word.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_strips_signatures_headers_and_secrets() {
        let message =
            "Error performing PUT http://h/b/k?X-Amz-Signature=abc&X-Amz-Credential=AKIA \
                       in 1s\nAuthorization: AWS4-HMAC-SHA256 Credential=AKIA/x, Signature=ff\n\
                       the secret is sup3rs3cret";
        let redacted = redact(message, &["sup3rs3cret"]);
        assert!(!redacted.contains("X-Amz-Signature"), "{redacted}");
        assert!(!redacted.contains("AKIA"), "{redacted}");
        assert!(!redacted.contains("sup3rs3cret"), "{redacted}");
        assert!(!redacted.contains("Signature=ff"), "{redacted}");
        assert!(redacted.contains("http://h/b/k?[redacted]"), "{redacted}");
    }

    #[test]
    fn loopback_endpoints_are_recognised() {
        assert!(is_loopback_endpoint("http://127.0.0.1:9000"));
        assert!(is_loopback_endpoint("http://localhost:9000/"));
        assert!(is_loopback_endpoint("http://[::1]:9000"));
        assert!(!is_loopback_endpoint("http://minio.internal:9000"));
        assert!(!is_loopback_endpoint("http://127.0.0.1.evil.com"));
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
    }
}
