//! Content-addressed artifacts: datasets, adapters, checkpoints, merged models.
//!
//! An artifact is named by a sha256: of its bytes for a file, of its manifest (the sorted
//! list of relative paths with their own hashes and sizes) for a directory. Events carry
//! [`ArtifactRef`]s; a service reads another service's output only through [`ArtifactStore::fetch`],
//! which verifies the hash before handing out a path.
//!
//! Local layout under `<FC_DATA_DIR>/artifacts/`:
//! `blobs/<sha256>` (file contents), `manifests/<sha256>.json` (directory manifests),
//! `dirs/<sha256>/...` (a directory materialized from its blobs, by hard link or copy).
//! In distributed mode the same blobs and manifests also live in the JetStream Object Store
//! bucket `fc-artifacts` (`blob.<sha256>`, `manifest.<sha256>`), and the local layout is a cache.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fc_bus::Bus;
use fc_events::subjects::OBJECT_ARTIFACTS;
pub use fc_events::{ArtifactKind, ArtifactRef};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("artifact {0} not found")]
    NotFound(String),
    #[error("artifact {sha256} is corrupt: content hashes to {actual}")]
    Corrupt { sha256: String, actual: String },
    #[error("artifact manifest {0} is invalid: {1}")]
    BadManifest(String, String),
    #[error("object store: {0}")]
    Remote(#[from] fc_bus::BusError),
    #[error("background task failed: {0}")]
    Task(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io { path: path.display().to_string(), source }
}

/// One file of a directory artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub files: Vec<ManifestEntry>,
}

impl Manifest {
    fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The artifact store. Cheap to clone.
#[derive(Clone)]
pub struct ArtifactStore {
    root: PathBuf,
    remote: Option<Bus>,
    verified: Arc<Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactStore").field("root", &self.root).field("remote", &self.remote.is_some()).finish()
    }
}

/// sha256 of `bytes` as 64 lowercase hex digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn hash_file(path: &Path) -> Result<(String, u64), ArtifactError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(io(path))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl ArtifactStore {
    /// A local store under `data_dir/artifacts`.
    pub fn local(data_dir: &Path) -> Self {
        Self { root: data_dir.join("artifacts"), remote: None, verified: Arc::new(Mutex::new(HashSet::new())) }
    }

    /// The store matching the bus: the Object Store (with a local cache) on JetStream,
    /// the local directory on the embedded bus.
    pub fn for_bus(bus: &Bus, data_dir: &Path) -> Self {
        let mut s = Self::local(data_dir);
        if bus.backend_name() == "jetstream" {
            s.remote = Some(bus.clone());
        }
        s
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, sha: &str) -> PathBuf {
        self.root.join("blobs").join(sha)
    }
    fn manifest_path(&self, sha: &str) -> PathBuf {
        self.root.join("manifests").join(format!("{sha}.json"))
    }

    /// Stores a copy of the file at `path`.
    pub async fn put_file(&self, path: &Path, kind: ArtifactKind, name: &str) -> Result<ArtifactRef, ArtifactError> {
        let (me, p) = (self.clone(), path.to_path_buf());
        let (sha, bytes) = blocking(move || me.put_file_blocking(&p)).await?;
        self.upload_blob(&sha).await?;
        Ok(ArtifactRef { sha256: sha, kind, bytes, name: name.into() })
    }

    /// Stores `data` as a file artifact.
    pub async fn put_bytes(&self, data: &[u8], kind: ArtifactKind, name: &str) -> Result<ArtifactRef, ArtifactError> {
        let sha = sha256_hex(data);
        let path = self.blob_path(&sha);
        if !path.exists() {
            write_atomic(&path, data)?;
        }
        self.upload_blob(&sha).await?;
        Ok(ArtifactRef { sha256: sha, kind, bytes: data.len() as u64, name: name.into() })
    }

    /// Stores every regular file under `dir` (recursively) as a directory artifact.
    pub async fn put_dir(&self, dir: &Path, kind: ArtifactKind, name: &str) -> Result<ArtifactRef, ArtifactError> {
        let (me, d) = (self.clone(), dir.to_path_buf());
        let (sha, manifest) = blocking(move || me.put_dir_blocking(&d)).await?;
        if self.remote.is_some() {
            for f in &manifest.files {
                self.upload_blob(&f.sha256).await?;
            }
            self.upload(&format!("manifest.{sha}"), &self.manifest_path(&sha)).await?;
        }
        let bytes = manifest.files.iter().map(|f| f.bytes).sum();
        Ok(ArtifactRef { sha256: sha, kind, bytes, name: name.into() })
    }

    /// A verified local path holding the artifact: the file, or the materialized directory.
    pub async fn fetch(&self, r: &ArtifactRef) -> Result<PathBuf, ArtifactError> {
        self.fetch_hash(&r.sha256).await
    }

    /// Like [`fetch`](Self::fetch) by hash alone (e.g. `artifact:<sha256>` in a config).
    pub async fn fetch_hash(&self, sha: &str) -> Result<PathBuf, ArtifactError> {
        if !is_hash(sha) {
            return Err(ArtifactError::NotFound(sha.to_string()));
        }
        self.download_if_missing(sha).await?;
        let me = self.clone();
        let sha = sha.to_string();
        blocking(move || me.materialize(&sha)).await
    }

    fn put_file_blocking(&self, path: &Path) -> Result<(String, u64), ArtifactError> {
        let (sha, bytes) = hash_file(path)?;
        let dest = self.blob_path(&sha);
        if !dest.exists() {
            let parent = dest.parent().unwrap_or(&self.root);
            std::fs::create_dir_all(parent).map_err(io(parent))?;
            let tmp = dest.with_extension(format!("tmp{}", std::process::id()));
            std::fs::copy(path, &tmp).map_err(io(path))?;
            std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
        }
        Ok((sha, bytes))
    }

    fn put_dir_blocking(&self, dir: &Path) -> Result<(String, Manifest), ArtifactError> {
        let mut files = Vec::new();
        collect_files(dir, dir, &mut files)?;
        files.sort();
        let mut entries = Vec::with_capacity(files.len());
        for rel in files {
            let (sha, bytes) = self.put_file_blocking(&dir.join(&rel))?;
            entries.push(ManifestEntry { path: rel, sha256: sha, bytes });
        }
        let manifest = Manifest { files: entries };
        let body = manifest.to_bytes();
        let sha = sha256_hex(&body);
        let path = self.manifest_path(&sha);
        if !path.exists() {
            write_atomic(&path, &body)?;
        }
        Ok((sha, manifest))
    }

    fn verify_blob(&self, sha: &str) -> Result<(), ArtifactError> {
        if self.verified.lock().map(|v| v.contains(sha)).unwrap_or(false) {
            return Ok(());
        }
        let (actual, _) = hash_file(&self.blob_path(sha))?;
        if actual != sha {
            return Err(ArtifactError::Corrupt { sha256: sha.into(), actual });
        }
        if let Ok(mut v) = self.verified.lock() {
            v.insert(sha.to_string());
        }
        Ok(())
    }

    fn read_manifest(&self, sha: &str) -> Result<Manifest, ArtifactError> {
        let path = self.manifest_path(sha);
        let body = std::fs::read(&path).map_err(io(&path))?;
        let actual = sha256_hex(&body);
        if actual != sha {
            return Err(ArtifactError::Corrupt { sha256: sha.into(), actual });
        }
        let m: Manifest = serde_json::from_slice(&body).map_err(|e| ArtifactError::BadManifest(sha.into(), e.to_string()))?;
        for f in &m.files {
            let p = Path::new(&f.path);
            if p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) || !is_hash(&f.sha256) {
                return Err(ArtifactError::BadManifest(sha.into(), format!("unsafe entry {}", f.path)));
            }
        }
        Ok(m)
    }

    fn materialize(&self, sha: &str) -> Result<PathBuf, ArtifactError> {
        if self.blob_path(sha).exists() {
            self.verify_blob(sha)?;
            return Ok(self.blob_path(sha));
        }
        if !self.manifest_path(sha).exists() {
            return Err(ArtifactError::NotFound(sha.into()));
        }
        let m = self.read_manifest(sha)?;
        let out = self.root.join("dirs").join(sha);
        let done = out.join(".fc-complete");
        if done.exists() {
            return Ok(out);
        }
        for f in &m.files {
            self.verify_blob(&f.sha256)?;
            let dest = out.join(&f.path);
            let parent = dest.parent().unwrap_or(&out);
            std::fs::create_dir_all(parent).map_err(io(parent))?;
            if dest.exists() {
                continue;
            }
            let src = self.blob_path(&f.sha256);
            if std::fs::hard_link(&src, &dest).is_err() {
                std::fs::copy(&src, &dest).map_err(io(&dest))?;
            }
        }
        std::fs::write(&done, b"").map_err(io(&done))?;
        Ok(out)
    }

    async fn upload_blob(&self, sha: &str) -> Result<(), ArtifactError> {
        if self.remote.is_some() {
            self.upload(&format!("blob.{sha}"), &self.blob_path(sha)).await?;
        }
        Ok(())
    }

    async fn upload(&self, name: &str, path: &Path) -> Result<(), ArtifactError> {
        let Some(bus) = &self.remote else { return Ok(()) };
        let data = tokio::fs::read(path).await.map_err(io(path))?;
        bus.object_put(OBJECT_ARTIFACTS, name, Bytes::from(data)).await?;
        Ok(())
    }

    async fn download(&self, name: &str, dest: &Path) -> Result<bool, ArtifactError> {
        let Some(bus) = &self.remote else { return Ok(false) };
        match bus.object_get(OBJECT_ARTIFACTS, name).await? {
            Some(data) => {
                write_atomic(dest, &data)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn download_if_missing(&self, sha: &str) -> Result<(), ArtifactError> {
        if self.remote.is_none() || self.blob_path(sha).exists() || self.manifest_path(sha).exists() {
            return Ok(());
        }
        if self.download(&format!("blob.{sha}"), &self.blob_path(sha)).await? {
            return Ok(());
        }
        if !self.download(&format!("manifest.{sha}"), &self.manifest_path(sha)).await? {
            return Err(ArtifactError::NotFound(sha.into()));
        }
        let me = self.clone();
        let s = sha.to_string();
        let m = blocking(move || me.read_manifest(&s)).await?;
        for f in &m.files {
            let p = self.blob_path(&f.sha256);
            if !p.exists() && !self.download(&format!("blob.{}", f.sha256), &p).await? {
                return Err(ArtifactError::NotFound(f.sha256.clone()));
            }
        }
        Ok(())
    }
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), ArtifactError> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        let ft = entry.file_type().map_err(io(&path))?;
        if ft.is_dir() {
            collect_files(root, &path, out)?;
        } else if ft.is_file() {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            if rel == Path::new(".fc-complete") {
                continue;
            }
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ArtifactError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ArtifactError> + Send + 'static) -> Result<T, ArtifactError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ArtifactError::Task(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_roundtrip_and_corruption_is_caught() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = ArtifactStore::local(tmp.path());
        let r = store.put_bytes(b"hello", ArtifactKind::Dataset, "h.txt").await.expect("put");
        assert_eq!(r.sha256, sha256_hex(b"hello"));
        let p = store.fetch(&r).await.expect("fetch");
        assert_eq!(std::fs::read(&p).expect("read"), b"hello");
        // A fresh store (no verification cache) notices a tampered blob.
        std::fs::write(&p, b"tampered").expect("tamper");
        let fresh = ArtifactStore::local(tmp.path());
        assert!(matches!(fresh.fetch(&r).await, Err(ArtifactError::Corrupt { .. })));
    }

    #[tokio::test]
    async fn directory_is_content_addressed() {
        let tmp = tempfile::tempdir().expect("tmp");
        let src = tmp.path().join("model");
        std::fs::create_dir_all(src.join("sub")).expect("mkdir");
        std::fs::write(src.join("config.json"), b"{}").expect("w");
        std::fs::write(src.join("sub/weights.bin"), vec![7u8; 1000]).expect("w");
        let store = ArtifactStore::local(&tmp.path().join("data"));
        let a = store.put_dir(&src, ArtifactKind::Model, "model").await.expect("put");
        let b = store.put_dir(&src, ArtifactKind::Model, "model").await.expect("put again");
        assert_eq!(a.sha256, b.sha256, "same content, same name");
        assert_eq!(a.bytes, 1002);
        let out = store.fetch(&a).await.expect("fetch");
        assert_eq!(std::fs::read(out.join("sub/weights.bin")).expect("read").len(), 1000);
        std::fs::write(src.join("config.json"), b"{\"x\":1}").expect("w");
        let c = store.put_dir(&src, ArtifactKind::Model, "model").await.expect("put changed");
        assert_ne!(a.sha256, c.sha256);
    }

    #[tokio::test]
    async fn unknown_and_malformed_hashes_are_not_found() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = ArtifactStore::local(tmp.path());
        assert!(matches!(store.fetch_hash(&"0".repeat(64)).await, Err(ArtifactError::NotFound(_))));
        assert!(matches!(store.fetch_hash("../etc/passwd").await, Err(ArtifactError::NotFound(_))));
    }
}
