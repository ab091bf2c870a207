//! Building a warehouse's object store, and making sure Delta commits on it are atomic.
//!
//! A Delta commit is the creation of `_delta_log/<version>.json`; two writers that race for the
//! same version must not both succeed, or one commit is silently lost. deltalake writes commit
//! files with `PutMode::Create` (put-if-absent), so safety rests on the store refusing to
//! overwrite:
//!
//! - local folders and memory stores refuse natively;
//! - Azure and GCS refuse natively (`If-None-Match: *` / `ifGenerationMatch=0`);
//! - S3 refuses with a conditional `PUT` (`If-None-Match: *`), which AWS S3 has supported since
//!   August 2024 and current MinIO, Ceph RGW, R2 and moto support too. object_store sends the
//!   header unless `aws_conditional_put=disabled`.
//!
//! A server that ignores the header would accept both racing commits. So before the first
//! write, [`check_commit_safety`] proves the store refuses: it creates a probe object under
//! `<warehouse>/_pitlake/` and then tries to create it again, which must fail. A store that
//! cannot refuse gets no writes, with an error that says how to get a safe one. Only the
//! explicit `aws_s3_allow_unsafe_rename=true` (deltalake's switch, for a warehouse with exactly
//! one writer) lets writes through, with put-if-absent emulated by a check before the put.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::limit::LimitStore;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use url::Url;

use crate::error::{PitlakeError, Result};
use crate::storage::options::{Backend, StoreOptions};

/// Builds the store for a cloud warehouse URL (S3, GCS, Azure), rooted at the bucket or
/// container, and the warehouse's path inside it.
pub(crate) fn build_cloud_store(
    backend: Backend,
    url: &Url,
    options: &StoreOptions,
) -> Result<(Arc<dyn ObjectStore>, Path)> {
    let shown = url.to_string();
    let failed = |e: object_store::Error| PitlakeError::Warehouse {
        url: shown.clone(),
        message: format!("cannot set up the object store: {e}"),
    };
    // The three cloud builders share no trait; each takes the options and the retry settings
    // the same way.
    macro_rules! configured {
        ($builder:expr) => {{
            let mut builder = $builder;
            for (key, value) in &options.store {
                let key = key.parse().map_err(failed)?;
                builder = builder.with_config(key, value);
            }
            Arc::new(
                builder
                    .with_retry(options.retry.clone())
                    .build()
                    .map_err(failed)?,
            )
        }};
    }
    let store: Arc<dyn ObjectStore> = match backend {
        // Not `from_env`: the environment was merged into the options already, in the
        // documented order (see `storage::options`).
        Backend::S3 => configured!(AmazonS3Builder::new().with_url(url.as_str())),
        Backend::Gcs => configured!(GoogleCloudStorageBuilder::from_env().with_url(url.as_str())),
        Backend::Azure => configured!(MicrosoftAzureBuilder::from_env().with_url(url.as_str())),
        Backend::Local | Backend::Memory => {
            return Err(PitlakeError::Internal(format!(
                "build_cloud_store called for a local warehouse {url}"
            )));
        }
    };
    let store: Arc<dyn ObjectStore> = match options.concurrency_limit {
        Some(limit) => Arc::new(LimitStore::new(store, limit)),
        None => store,
    };
    let store: Arc<dyn ObjectStore> = Arc::new(GuardedStore {
        inner: store,
        single_writer: options.allow_unsafe_rename && backend == Backend::S3,
    });
    // `s3://bucket/a/b`, `gs://bucket/a/b`, `az://container/a/b`: the bucket or container is
    // the host, the path is the warehouse inside it.
    let root = Path::parse(url.path().trim_matches('/')).map_err(|e| PitlakeError::Warehouse {
        url: url.to_string(),
        message: format!("is not a valid object path: {e}"),
    })?;
    Ok((store, root))
}

/// Whether commits on this store can be trusted to be atomic, and if not, why.
///
/// The first write in a process calls this; a store that passes is not probed again.
pub(crate) async fn check_commit_safety(
    store: &dyn ObjectStore,
    root: &Path,
    shown_url: &str,
) -> Result<()> {
    let probe = root
        .clone()
        .join("_pitlake")
        .join("commit-check")
        .join(format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
    let create = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    let unsafe_store = |why: &str| PitlakeError::Warehouse {
        url: shown_url.to_string(),
        message: format!(
            "refusing to write: {why}, so two writers committing at once could silently lose a \
             commit. Use a store that supports conditional writes (AWS S3, current MinIO, Ceph \
             RGW, R2), and do not set aws_conditional_put=disabled; or, if exactly one process \
             ever writes to this warehouse, accept the risk with --storage-option \
             aws_s3_allow_unsafe_rename=true"
        ),
    };
    match store
        .put_opts(&probe, PutPayload::from_static(b"1"), create.clone())
        .await
    {
        Ok(_) => {}
        Err(object_store::Error::NotImplemented { .. }) => {
            return Err(unsafe_store(
                "the object store has no put-if-absent (conditional put is disabled)",
            ));
        }
        Err(e) => return Err(storage_error(shown_url, "cannot write", e)),
    }
    let second = store
        .put_opts(&probe, PutPayload::from_static(b"2"), create)
        .await;
    // Best effort: a leftover probe is a few bytes in a hidden folder.
    let _ = store.delete(&probe).await;
    match second {
        Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
        Ok(_) => Err(unsafe_store(
            "the server ignored `If-None-Match: *` and overwrote an existing object",
        )),
        Err(e) => Err(storage_error(shown_url, "cannot write", e)),
    }
}

/// An object-store failure, said for people: what was being done and where, and for requests
/// that ran out of retries, which setting bounds them.
pub(crate) fn storage_error(url: &str, doing: &str, err: object_store::Error) -> PitlakeError {
    storage_error_text(url, doing, &err)
}

fn storage_error_text(url: &str, doing: &str, err: &object_store::Error) -> PitlakeError {
    let text = err.to_string();
    let hint = if text.contains("error sending request") || text.contains("timed out") {
        " (the object store did not answer; check the endpoint and the network. Retries are \
         bounded by the max_retries and retry_timeout storage options)"
    } else if text.contains("status code: 5") {
        " (the object store answered with a server error; retries are bounded by the \
         max_retries and retry_timeout storage options)"
    } else {
        ""
    };
    PitlakeError::Warehouse {
        url: url.to_string(),
        message: format!("{doing}: {text}{hint}"),
    }
}

/// The object-store failure somewhere in `err`'s chain of causes (deltalake wraps a failed
/// upload in a Parquet error, for one), said as [`storage_error`] says it; `None` when the
/// failure was not the store's, or was only a missing object.
pub(crate) fn storage_cause(
    url: &str,
    doing: &str,
    err: &(dyn std::error::Error + 'static),
) -> Option<PitlakeError> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(store) = e.downcast_ref::<object_store::Error>() {
            if matches!(store, object_store::Error::NotFound { .. }) {
                return None;
            }
            return Some(storage_error_text(url, doing, store));
        }
        if let Some(parquet::errors::ParquetError::External(inner)) =
            e.downcast_ref::<parquet::errors::ParquetError>()
        {
            current = Some(inner.as_ref());
            continue;
        }
        // An io::Error's `source` skips the error it wraps; `get_ref` is that error.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            current = Some(inner);
            continue;
        }
        current = e.source();
    }
    None
}

/// A cloud store with two guards:
///
/// - listings "after an offset" hold only names after it, even from a server that ignores the
///   offset parameter (Azurite ignores Azure's `startFrom`; some S3-compatible servers ignore
///   `start-after`). The Delta kernel finds the newest commit by listing after a version and
///   fails on an older one in the list;
/// - with `single_writer` (only when the user asked for it by name), put-if-absent is a check
///   followed by a put. Safe only with one writer: two writers can both pass the check.
#[derive(Debug)]
struct GuardedStore {
    inner: Arc<dyn ObjectStore>,
    single_writer: bool,
}

impl fmt::Display for GuardedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.single_writer {
            write!(f, "SingleWriter({})", self.inner)
        } else {
            write!(f, "{}", self.inner)
        }
    }
}

#[async_trait]
impl ObjectStore for GuardedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if self.single_writer && matches!(opts.mode, PutMode::Create) {
            match self.inner.head(location).await {
                Ok(_) => {
                    return Err(object_store::Error::AlreadyExists {
                        path: location.to_string(),
                        source: "the object exists (checked before writing)".into(),
                    });
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            let overwrite = PutOptions {
                mode: PutMode::Overwrite,
                ..opts
            };
            return self.inner.put_opts(location, payload, overwrite).await;
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let offset = offset.clone();
        self.inner
            .list_with_offset(prefix, &offset)
            .try_filter(move |meta| futures::future::ready(meta.location > offset))
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

/// Lets deltalake open tables on `gs://` and `az://` URLs with pitlake's own store.
///
/// deltalake picks a log store by URL scheme, and registers S3's (its `s3` feature) but not
/// GCS's or Azure's, whose crates pitlake does not build. Their stores refuse to overwrite
/// natively, so deltalake's default log store (commits by put-if-absent) is the right one.
pub(crate) fn register_log_stores() {
    use deltalake::logstore::{
        LogStore, LogStoreFactory, ObjectStoreRef, StorageConfig, default_logstore,
        logstore_factories,
    };

    #[derive(Debug, Default)]
    struct PutIfAbsentLogStores;

    impl LogStoreFactory for PutIfAbsentLogStores {
        fn with_options(
            &self,
            prefixed_store: ObjectStoreRef,
            root_store: ObjectStoreRef,
            location: &Url,
            options: &StorageConfig,
        ) -> deltalake::DeltaResult<Arc<dyn LogStore>> {
            Ok(default_logstore(
                prefixed_store,
                root_store,
                location,
                options,
            ))
        }
    }

    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let factories = logstore_factories();
        for scheme in ["gs", "az", "abfs", "abfss", "azure", "adl"] {
            if let Ok(url) = Url::parse(&format!("{scheme}://"))
                && !factories.contains_key(&url)
            {
                factories.insert(url, Arc::new(PutIfAbsentLogStores));
            }
        }
    });
}
