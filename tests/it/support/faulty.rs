//! An object store wrapper that fails on demand: the n-th write-type operation (put, copy,
//! rename, delete) and every one after it return an error, as a store that went away would
//! (or, `transient`, only the n-th attempt fails, as a dropped request would). Reads and
//! listings pass through, so a test can see what was written.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    /// Write operations seen so far.
    pub writes: AtomicUsize,
    /// The first failing write (1-based); `usize::MAX`: none.
    pub fail_from: AtomicUsize,
    /// Only that one write fails.
    pub transient: bool,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>, fail_from: usize) -> Arc<FaultyStore> {
        Arc::new(FaultyStore {
            inner,
            writes: AtomicUsize::new(0),
            fail_from: AtomicUsize::new(fail_from),
            transient: false,
        })
    }

    /// Fails only the `n`-th write.
    pub fn transient(inner: Arc<dyn ObjectStore>, n: usize) -> Arc<FaultyStore> {
        Arc::new(FaultyStore { inner, writes: AtomicUsize::new(0), fail_from: AtomicUsize::new(n), transient: true })
    }

    fn write(&self, op: &str, path: &Path) -> Result<()> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        let from = self.fail_from.load(Ordering::SeqCst);
        if n == from || !self.transient && n > from {
            return Err(object_store::Error::Generic {
                store: "faulty",
                source: format!("injected failure of write #{n} ({op} {path})").into(),
            });
        }
        Ok(())
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.write("put", location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.write("multipart", location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        if let Err(e) = self.write("delete", &Path::from("…")) {
            return Box::pin(futures::stream::once(async move { Err(e) }));
        }
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.write("copy", to)?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.write("rename", to)?;
        self.inner.rename_opts(from, to, options).await
    }
}
