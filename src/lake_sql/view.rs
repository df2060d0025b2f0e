//! A read-only object store that shows one version of a Delta table: listing it yields
//! exactly the files that version holds (sizes and times from the log, no listing call to
//! the lake), reads go to the lake. DataFusion's listing table over it sees the table as
//! a directory of exactly those files, its `key=value` directories included, so partition
//! pruning and Parquet pushdown work as for a plain table, and files a compaction replaced
//! (still there until vacuumed) or `_delta_log/` never show.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// One table version's files over the lake's store.
#[derive(Debug)]
pub struct SnapshotView {
    inner: Arc<dyn ObjectStore>,
    files: Vec<ObjectMeta>,
}

impl SnapshotView {
    /// `files`: every file of the version (full paths in the lake).
    pub fn new(inner: Arc<dyn ObjectStore>, mut files: Vec<ObjectMeta>) -> SnapshotView {
        files.sort_by(|a, b| a.location.cmp(&b.location));
        SnapshotView { inner, files }
    }

    fn under<'a>(&'a self, prefix: Option<&'a Path>) -> impl Iterator<Item = &'a ObjectMeta> + 'a {
        self.files.iter().filter(move |f| prefix.is_none_or(|p| f.location.prefix_matches(p)))
    }
}

impl fmt::Display for SnapshotView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeltaSnapshot({} files over {})", self.files.len(), self.inner)
    }
}

fn read_only() -> object_store::Error {
    object_store::Error::NotSupported { source: "a Delta table version is read-only".into() }
}

#[async_trait]
impl ObjectStore for SnapshotView {
    async fn put_opts(&self, _: &Path, _: PutPayload, _: PutOptions) -> Result<PutResult> {
        Err(read_only())
    }

    async fn put_multipart_opts(&self, _: &Path, _: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        Err(read_only())
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(&self, _: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        Box::pin(futures::stream::once(async { Err(read_only()) }))
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let files: Vec<Result<ObjectMeta>> = self.under(prefix).cloned().map(Ok).collect();
        Box::pin(futures::stream::iter(files))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let depth = prefix.map_or(0, |p| p.parts().count());
        let mut dirs = BTreeSet::new();
        let mut objects = Vec::new();
        for f in self.under(prefix) {
            let parts: Vec<_> = f.location.parts().collect();
            if parts.len() == depth + 1 {
                objects.push(f.clone());
            } else if parts.len() > depth + 1 {
                dirs.insert(Path::from_iter(parts.into_iter().take(depth + 1)));
            }
        }
        Ok(ListResult { common_prefixes: dirs.into_iter().collect(), objects })
    }

    async fn copy_opts(&self, _: &Path, _: &Path, _: CopyOptions) -> Result<()> {
        Err(read_only())
    }

    async fn rename_opts(&self, _: &Path, _: &Path, _: RenameOptions) -> Result<()> {
        Err(read_only())
    }
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    use super::*;

    fn meta(p: &str) -> ObjectMeta {
        ObjectMeta { location: Path::from(p), last_modified: chrono::Utc::now(), size: 1, e_tag: None, version: None }
    }

    #[tokio::test]
    async fn lists_only_the_versions_files_as_directories() {
        let view = SnapshotView::new(
            Arc::new(InMemory::new()),
            vec![meta("t/d=1/a.parquet"), meta("t/d=1/b.parquet"), meta("t/d=2/x/c.parquet"), meta("u/z.parquet")],
        );
        let all: Vec<_> = view.list(Some(&Path::from("t"))).try_collect().await.unwrap();
        assert_eq!(all.len(), 3);
        let top = view.list_with_delimiter(Some(&Path::from("t"))).await.unwrap();
        assert_eq!(top.common_prefixes, vec![Path::from("t/d=1"), Path::from("t/d=2")]);
        assert!(top.objects.is_empty());
        let d1 = view.list_with_delimiter(Some(&Path::from("t/d=1"))).await.unwrap();
        assert_eq!(
            d1.objects.iter().map(|o| o.location.to_string()).collect::<Vec<_>>(),
            ["t/d=1/a.parquet", "t/d=1/b.parquet"]
        );
        assert!(view.put(&Path::from("t/new"), PutPayload::from("x")).await.is_err());
    }
}
