//! An export's bytes on their way to a file or an object: written under a temporary name and
//! published in one step, counted and hashed (SHA-256) on the way; and the same bytes read back.
//!
//! - A local file is written to a temporary file beside the target (`.pitlake-export-*`, with
//!   the target's permissions: [`Replacement`]), flushed to disk, then renamed over the target:
//!   readers see the old file or the new one, never part of one. The kernel is asked to start
//!   writing it out every [`WRITEBACK`] bytes on the way (Linux), so the flush before the
//!   rename waits for the last few megabytes only. A failure or a cancelled export deletes the
//!   temporary file; a process that dies leaves it behind (hidden, never read; delete it at
//!   leisure). A target that is not a regular file (a device) is refused.
//! - An object is uploaded with a single PUT when it is small (under [`PART`]) and otherwise
//!   streamed as a multipart upload in parts of [`PART`], at most [`PARTS_IN_FLIGHT`] at a
//!   time, so an export never holds more than that in memory. The object appears when the
//!   upload completes, whole; a failure or a cancelled export aborts the upload. A process
//!   that dies leaves an incomplete upload, invisible to readers, which the bucket's lifecycle
//!   rule for incomplete multipart uploads removes (see docs/operations.md).

use std::io::Write;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};

use crate::error::{PitlakeError, Result};
use crate::storage::Replacement;

/// The size of one multipart part (and the largest object uploaded with one PUT).
pub(super) const PART: usize = 10 << 20;
/// Parts uploading at once.
pub(super) const PARTS_IN_FLIGHT: usize = 4;

/// The size and SHA-256 of a file's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FileDigest {
    /// Bytes.
    pub bytes: u64,
    /// SHA-256 of the bytes, lowercase hex.
    pub sha256: String,
}

/// Bytes written to a local file between two requests to start writing it out to disk.
const WRITEBACK: u64 = 16 << 20;

/// Asks the kernel to start writing `file`'s dirty pages out to disk, without waiting for them
/// (Linux; elsewhere nothing). Done as the file grows, the `fsync` before publishing then
/// waits for what was written since the last request, not for the whole file: at the shared
/// workload's medium scale (a 105 MB export) the `fsync` took about 40 ms at the end.
#[allow(unsafe_code)]
fn start_writeback(file: &std::fs::File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: sync_file_range reads and writes no memory of this process; the descriptor is
        // open (borrowed from a live `File`); offset 0 and length 0 mean the whole file. A
        // failure only leaves the work to the `fsync`, so its result is not needed.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// Bytes on their way to a local file, its writeback started every [`WRITEBACK`] bytes.
struct LocalOut {
    out: std::io::BufWriter<std::fs::File>,
    written: u64,
    started: u64,
}

impl Write for LocalOut {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.out.write(bytes)?;
        self.written += written as u64;
        if self.written - self.started >= WRITEBACK {
            start_writeback(self.out.get_ref());
            self.started = self.written;
        }
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Bytes handed to the hashing thread at once.
const HASH_BLOCK: usize = 1 << 20;
/// Blocks on their way to the hashing thread at most (the memory it takes beside the one being
/// filled and the one being hashed).
const HASH_QUEUE: usize = 4;

/// Counts and hashes bytes: a file's first [`HASH_BLOCK`] bytes are gathered, and from then on
/// hashed a block at a time by a thread of their own while the caller goes on (writing the
/// same bytes to a file, reading the next ones), so an export's hash takes little beyond its
/// writes. Up to [`HASH_QUEUE`] blocks wait for that thread; the caller waits when more do.
struct Hasher {
    bytes: u64,
    /// Bytes not yet handed on.
    block: Vec<u8>,
    hashing: Hashing,
}

enum Hashing {
    /// Nothing hashed yet: every byte so far is in the block.
    NotYet,
    /// By a thread that takes full blocks and gives them back emptied.
    Beside {
        blocks: std::sync::mpsc::SyncSender<Vec<u8>>,
        emptied: std::sync::mpsc::Receiver<Vec<u8>>,
        thread: std::thread::JoinHandle<ring::digest::Context>,
    },
    /// On the caller's thread (no thread could be started).
    Here(ring::digest::Context),
}

impl Hasher {
    fn new() -> Self {
        Self {
            bytes: 0,
            block: Vec::new(),
            hashing: Hashing::NotYet,
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        self.bytes += data.len() as u64;
        while !data.is_empty() {
            let take = (HASH_BLOCK - self.block.len()).min(data.len());
            self.block.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.block.len() == HASH_BLOCK {
                self.hand_on();
            }
        }
    }

    /// Hands the full block on, starting the thread with the first.
    fn hand_on(&mut self) {
        if let Hashing::NotYet = self.hashing {
            self.hashing = Hashing::start();
        }
        match &mut self.hashing {
            Hashing::Beside {
                blocks, emptied, ..
            } => {
                let next = emptied
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(HASH_BLOCK));
                // If the thread is gone, `finish` says so.
                let _ = blocks.send(std::mem::replace(&mut self.block, next));
            }
            Hashing::Here(context) => {
                context.update(&self.block);
                self.block.clear();
            }
            Hashing::NotYet => {}
        }
    }

    fn finish(self) -> Result<FileDigest> {
        let context = match self.hashing {
            Hashing::NotYet => {
                let mut context = ring::digest::Context::new(&ring::digest::SHA256);
                context.update(&self.block);
                context
            }
            Hashing::Here(mut context) => {
                context.update(&self.block);
                context
            }
            Hashing::Beside { blocks, thread, .. } => {
                let _ = blocks.send(self.block);
                drop(blocks);
                thread.join().map_err(|_| {
                    PitlakeError::Internal("the thread hashing an export panicked".into())
                })?
            }
        };
        let sha256 = context
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(FileDigest {
            bytes: self.bytes,
            sha256,
        })
    }
}

impl Hashing {
    /// A thread hashing the blocks sent to it, in order, until the sender is dropped; where
    /// none can be started, hashing here.
    fn start() -> Self {
        let (blocks, received) = std::sync::mpsc::sync_channel::<Vec<u8>>(HASH_QUEUE);
        let (giving_back, emptied) = std::sync::mpsc::channel();
        let started = std::thread::Builder::new()
            .name("export-hash".into())
            .spawn(move || {
                let mut context = ring::digest::Context::new(&ring::digest::SHA256);
                for mut block in received {
                    context.update(&block);
                    block.clear();
                    let _ = giving_back.send(block);
                }
                context
            });
        match started {
            Ok(thread) => Hashing::Beside {
                blocks,
                emptied,
                thread,
            },
            Err(_) => Hashing::Here(ring::digest::Context::new(&ring::digest::SHA256)),
        }
    }
}

/// Where an export's file goes.
#[derive(Debug, Clone)]
pub(super) enum Destination {
    /// A local file.
    Local(PathBuf),
    /// An object.
    Store {
        /// The store.
        store: Arc<dyn ObjectStore>,
        /// The object.
        path: Path,
    },
}

enum Target {
    Local {
        temp: Replacement,
        out: LocalOut,
        path: PathBuf,
    },
    Store {
        store: Arc<dyn ObjectStore>,
        path: Path,
        upload: Upload,
    },
}

enum Upload {
    /// Not yet [`PART`] bytes: one PUT at the end.
    Buffer(Vec<u8>),
    /// A multipart upload under way.
    Multipart(WriteMultipart),
}

/// A file being written under a temporary name (see the module docs).
pub(super) struct ExportSink {
    shown: String,
    hasher: Option<Hasher>,
    /// `None` once published or aborted.
    target: Option<Target>,
}

impl ExportSink {
    /// Starts a file at `destination`; `shown` names it in errors.
    pub fn create(destination: Destination, shown: &str) -> Result<Self> {
        let target = match destination {
            Destination::Local(path) => {
                let parent = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    Some(parent) => parent.to_path_buf(),
                    None => PathBuf::from("."),
                };
                std::fs::create_dir_all(&parent).map_err(|e| PitlakeError::Input {
                    path: parent.display().to_string(),
                    message: format!("cannot create the output folder: {e}"),
                })?;
                // A device (`/dev/null`) is refused: renamed over, it would become a file.
                let temp =
                    Replacement::create(&path, ".pitlake-export-").map_err(|e| match e.kind() {
                        std::io::ErrorKind::InvalidInput => PitlakeError::Input {
                            path: path.display().to_string(),
                            message: format!("{e}; an export writes a new file, or replaces one"),
                        },
                        _ => PitlakeError::Input {
                            path: parent.display().to_string(),
                            message: format!("cannot write to the output folder: {e}"),
                        },
                    })?;
                let out = LocalOut {
                    out: std::io::BufWriter::new(temp.file().try_clone()?),
                    written: 0,
                    started: 0,
                };
                Target::Local { temp, out, path }
            }
            Destination::Store { store, path } => Target::Store {
                store,
                path,
                upload: Upload::Buffer(Vec::new()),
            },
        };
        Ok(Self {
            shown: shown.to_string(),
            hasher: Some(Hasher::new()),
            target: Some(target),
        })
    }

    fn write_error(&self, message: String) -> PitlakeError {
        PitlakeError::Input {
            path: self.shown.clone(),
            message,
        }
    }

    /// Appends bytes.
    pub async fn put(&mut self, data: &[u8]) -> Result<()> {
        if let Some(hasher) = &mut self.hasher {
            hasher.update(data);
        }
        let shown = self.shown.clone();
        match &mut self.target {
            None => Err(PitlakeError::Internal(format!(
                "export sink for {shown} written after it was closed"
            ))),
            Some(Target::Local { out, .. }) => {
                out.write_all(data).map_err(|e| PitlakeError::Input {
                    path: shown,
                    message: format!("cannot write: {e}"),
                })
            }
            Some(Target::Store {
                store,
                path,
                upload,
            }) => {
                match upload {
                    Upload::Buffer(buffer) if buffer.len() + data.len() < PART => {
                        buffer.extend_from_slice(data);
                    }
                    Upload::Buffer(buffer) => {
                        let started = store.put_multipart(path).await?;
                        let mut multipart = WriteMultipart::new_with_chunk_size(started, PART);
                        multipart.put(Bytes::from(std::mem::take(buffer)));
                        multipart.write(data);
                        *upload = Upload::Multipart(multipart);
                    }
                    Upload::Multipart(multipart) => {
                        // Back pressure: at most PARTS_IN_FLIGHT parts in memory.
                        multipart.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                        multipart.write(data);
                    }
                }
                Ok(())
            }
        }
    }

    /// For a local file, a writer that hashes and writes in place (a Parquet file's row group
    /// then goes to the file page by page, never whole in memory); `None` for object storage,
    /// whose writes are [`ExportSink::put`]'s.
    pub fn local(&mut self) -> Option<LocalWriter<'_>> {
        match &mut self.target {
            Some(Target::Local { out, .. }) => Some(LocalWriter {
                out,
                hasher: self.hasher.as_mut(),
            }),
            _ => None,
        }
    }

    /// Publishes the file under its name, in one step, and returns its size and hash. On
    /// failure nothing is published and the temporary file or upload is gone.
    pub async fn publish(mut self) -> Result<FileDigest> {
        // Before anything is published: a hash that failed publishes nothing.
        let digest = match self.hasher.take() {
            Some(hasher) => hasher.finish()?,
            None => {
                return Err(PitlakeError::Internal(format!(
                    "export sink for {} has no hash",
                    self.shown
                )));
            }
        };
        let shown = self.shown.clone();
        match self.target.take() {
            None => {
                return Err(PitlakeError::Internal(format!(
                    "export sink for {shown} published twice"
                )));
            }
            Some(Target::Local { temp, out, path }) => {
                let file = out
                    .out
                    .into_inner()
                    .map_err(|e| self.write_error(format!("cannot write: {}", e.error())))?;
                // On disk before the rename, so a power cut cannot publish an empty file.
                file.sync_all()
                    .map_err(|e| self.write_error(format!("cannot write: {e}")))?;
                drop(file);
                let target = temp.target().to_path_buf();
                temp.persist().map_err(|e| PitlakeError::Input {
                    path: path.display().to_string(),
                    message: format!("cannot replace: {e}"),
                })?;
                sync_parent(&target);
            }
            Some(Target::Store {
                store,
                path,
                upload,
            }) => match upload {
                Upload::Buffer(buffer) => {
                    store.put(&path, Bytes::from(buffer).into()).await?;
                }
                Upload::Multipart(mut multipart) => {
                    // `finish` aborts the upload when completing fails, not when a part does.
                    if let Err(e) = multipart.wait_for_capacity(0).await {
                        let _ = multipart.abort().await;
                        return Err(e.into());
                    }
                    multipart.finish().await?;
                }
            },
        }
        Ok(digest)
    }

    /// Discards the file: deletes the temporary file, or aborts the upload.
    pub async fn abort(mut self) {
        // A temporary file deletes itself when dropped; a buffer was never sent.
        if let Some(Target::Store {
            upload: Upload::Multipart(multipart),
            ..
        }) = self.target.take()
            && let Err(e) = multipart.abort().await
        {
            tracing::warn!(output = %self.shown, error = %e, "cannot abort the upload");
        }
    }
}

impl Drop for ExportSink {
    /// A sink dropped unpublished (an export cancelled mid-way) aborts its upload in the
    /// background; a temporary file deletes itself.
    fn drop(&mut self) {
        if let Some(Target::Store {
            upload: Upload::Multipart(multipart),
            ..
        }) = self.target.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = multipart.abort().await;
            });
        }
    }
}

/// The bytes of a local export file, hashed as they are written (see [`ExportSink::local`]).
pub(super) struct LocalWriter<'a> {
    out: &'a mut LocalOut,
    hasher: Option<&'a mut Hasher>,
}

impl Write for LocalWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.out.write(bytes)?;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&bytes[..written]);
        }
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Flushes a folder's entries (the rename just made) to disk, where the platform can; a
/// failure only weakens durability against a power cut, so it is not an error.
fn sync_parent(path: &FsPath) {
    let parent = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => parent.to_path_buf(),
        None => PathBuf::from("."),
    };
    if let Ok(dir) = std::fs::File::open(parent) {
        let _ = dir.sync_all();
    }
}

/// Reads a file or object whole, in chunks, returning its size and hash (`None` when it does
/// not exist). With `copy_to`, the bytes are also written there (to read an object's rows from
/// a local copy).
pub(super) async fn digest_of(
    source: &Destination,
    shown: &str,
    mut copy_to: Option<&mut std::fs::File>,
) -> Result<Option<FileDigest>> {
    let mut hasher = Hasher::new();
    let read_error = |e: std::io::Error| PitlakeError::Input {
        path: shown.to_string(),
        message: format!("cannot read: {e}"),
    };
    match source {
        Destination::Local(path) => {
            use tokio::io::AsyncReadExt;
            let mut file = match tokio::fs::File::open(path).await {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(read_error(e)),
            };
            let mut buffer = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buffer).await.map_err(read_error)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buffer[..n]);
                if let Some(copy) = copy_to.as_mut() {
                    copy.write_all(&buffer[..n])?;
                }
            }
        }
        Destination::Store { store, path } => {
            let found = match store.get(path).await {
                Ok(found) => found,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let mut chunks = found.into_stream();
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk?;
                hasher.update(&chunk);
                if let Some(copy) = copy_to.as_mut() {
                    copy.write_all(&chunk)?;
                }
            }
        }
    }
    if let Some(copy) = copy_to {
        copy.flush()?;
    }
    Ok(Some(hasher.finish()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_files_appear_whole_and_failed_ones_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/x.bin");
        let mut sink = ExportSink::create(Destination::Local(path.clone()), "x").unwrap();
        sink.put(b"hello ").await.unwrap();
        sink.put(b"world").await.unwrap();
        // Nothing under the name until published; only the hidden temporary file.
        assert!(!path.exists());
        let digest = sink.publish().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
        assert_eq!(digest.bytes, 11);
        assert_eq!(
            digest.sha256,
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        let read = digest_of(&Destination::Local(path.clone()), "x", None)
            .await
            .unwrap();
        assert_eq!(read, Some(digest));

        // An aborted sink leaves the published file as it was and no temporary file.
        let mut sink = ExportSink::create(Destination::Local(path.clone()), "x").unwrap();
        sink.put(b"other").await.unwrap();
        sink.abort().await;
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("x.bin")]);
        assert_eq!(
            digest_of(&Destination::Local(dir.path().join("nope")), "nope", None)
                .await
                .unwrap(),
            None
        );
    }

    /// The hash of bytes given in pieces of any size, across block boundaries and past what
    /// waits for the hashing thread, is SHA-256 of them all (a file under one block is hashed
    /// without the thread).
    #[test]
    fn bytes_hashed_beside_are_hashed_whole_and_in_order() {
        let whole: Vec<u8> = (0..(HASH_QUEUE + 3) * HASH_BLOCK + 17)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        for len in [
            0,
            1,
            HASH_BLOCK - 1,
            HASH_BLOCK,
            HASH_BLOCK + 1,
            whole.len(),
        ] {
            let want = ring::digest::digest(&ring::digest::SHA256, &whole[..len]);
            let want: String = want.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            for piece in [1 << 20, 4095, 1 << 21, 7 << 18] {
                let mut hasher = Hasher::new();
                for bytes in whole[..len].chunks(piece) {
                    hasher.update(bytes);
                }
                let started = !matches!(hasher.hashing, Hashing::NotYet);
                assert_eq!(started, len >= HASH_BLOCK, "{len} in pieces of {piece}");
                let digest = hasher.finish().unwrap();
                assert_eq!(digest.bytes, len as u64);
                assert_eq!(digest.sha256, want, "{len} bytes in pieces of {piece}");
            }
        }
    }

    /// A device cannot be an export's file: renamed over, it would be replaced by a file.
    #[cfg(unix)]
    #[test]
    fn a_device_is_refused_and_left_alone() {
        let err = ExportSink::create(Destination::Local("/dev/null".into()), "x")
            .err()
            .expect("a device refused");
        assert!(err.to_string().contains("is not a regular file"), "{err}");
        let kind = std::fs::metadata("/dev/null").unwrap().file_type();
        assert!(!kind.is_file());
    }

    /// A local file larger than [`WRITEBACK`], written through `put` and through the Parquet
    /// writer's `local` handle: its writeback is started every [`WRITEBACK`] bytes, and the
    /// published bytes, size and hash are exactly what was written.
    #[tokio::test]
    async fn large_local_files_are_written_out_on_the_way() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.bin");
        let block: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 + i / 251) as u8).collect();
        let mut sink = ExportSink::create(Destination::Local(path.clone()), "big").unwrap();
        for _ in 0..20 {
            sink.put(&block).await.unwrap();
        }
        {
            let mut local = sink.local().unwrap();
            for _ in 0..20 {
                local.write_all(&block).unwrap();
            }
            local.flush().unwrap();
        }
        let Some(Target::Local { out, .. }) = &sink.target else {
            panic!("a local sink");
        };
        assert_eq!(out.written, 40 << 20);
        // Started at 16 and 32 MiB, not since.
        assert_eq!(out.started, 2 * WRITEBACK);
        let digest = sink.publish().await.unwrap();
        assert_eq!(digest.bytes, 40 << 20);
        let mut expected = ring::digest::Context::new(&ring::digest::SHA256);
        for _ in 0..40 {
            expected.update(&block);
        }
        let expected: String = expected
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(digest.sha256, expected);
        let read = std::fs::read(&path).unwrap();
        assert_eq!(read.len(), 40 << 20);
        assert!(read.chunks(block.len()).all(|c| c == block));
    }

    #[tokio::test]
    async fn objects_stream_in_parts_and_appear_when_complete() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let path = Path::from("exports/big.bin");
        let destination = Destination::Store {
            store: store.clone(),
            path: path.clone(),
        };
        let mut sink = ExportSink::create(destination.clone(), "big").unwrap();
        let chunk = vec![7u8; 1 << 20];
        let total = PART * 2 + 12345;
        let mut written = 0;
        while written < total {
            let n = chunk.len().min(total - written);
            sink.put(&chunk[..n]).await.unwrap();
            written += n;
        }
        // A multipart upload is under way; the object is not there yet.
        assert!(store.head(&path).await.is_err());
        let digest = sink.publish().await.unwrap();
        assert_eq!(digest.bytes, total as u64);
        assert_eq!(store.head(&path).await.unwrap().size, total as u64);
        let read = digest_of(&destination, "big", None).await.unwrap();
        assert_eq!(read, Some(digest));

        // An aborted upload publishes nothing.
        let other = Destination::Store {
            store: store.clone(),
            path: Path::from("exports/other.bin"),
        };
        let mut sink = ExportSink::create(other, "other").unwrap();
        for _ in 0..(PART / chunk.len() + 2) {
            sink.put(&chunk).await.unwrap();
        }
        sink.abort().await;
        assert!(store.head(&Path::from("exports/other.bin")).await.is_err());
    }
}
