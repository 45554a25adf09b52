//! containerd's content store and leases, as the image code uses them: blobs written
//! through the Content service's `Write` stream (stat, 1 MiB writes, commit with the
//! expected digest and size), their GC labels, reading small blobs back, and leases
//! that keep half-imported content from being collected.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::{
    AddResourceRequest, CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest,
    Info, InfoRequest, ReadContentRequest, Resource as LeaseResource, UpdateRequest, WriteAction,
    WriteContentRequest, WriteContentResponse, content_client::ContentClient,
    leases_client::LeasesClient,
};
use containerd_client::tonic::{Code, Request, Status, Streaming};
use containerd_client::types::Descriptor as ContainerdDescriptor;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::ImageError;
use super::oci::sha256_digest;
use crate::containerd::Containerd;

/// The gRPC metadata header that puts a request's new objects under a lease.
const LEASE_HEADER: &str = "containerd-lease";
/// Lease label holding the RFC 3339 time after which the GC may delete the lease.
const LEASE_EXPIRE_LABEL: &str = "containerd.io/gc.expire";
/// Size of one `Write` message's data.
pub(super) const CHUNK: usize = 1 << 20;
/// Deadline of a whole blob write stream (a large layer on a slow disk).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How often a write waits for another writer of the same blob to finish.
const LOCKED_RETRIES: u32 = 20;

/// containerd's garbage-collection labels.
pub(super) mod gc {
    /// On a manifest: its config.
    pub const REF_CONFIG: &str = "containerd.io/gc.ref.content.config";
    /// On a manifest: prefix of its layers, `...l.<i>`.
    pub const REF_LAYER_PREFIX: &str = "containerd.io/gc.ref.content.l.";
    /// On an index: prefix of its manifests, `...m.<i>`.
    pub const REF_MANIFEST_PREFIX: &str = "containerd.io/gc.ref.content.m.";
    /// On a config: prefix of the unpacked snapshot, `...snapshot.<snapshotter>`.
    pub const REF_SNAPSHOT_PREFIX: &str = "containerd.io/gc.ref.snapshot.";
    /// On a layer: its diff ID.
    pub const UNCOMPRESSED: &str = "containerd.io/uncompressed";
}

/// A content descriptor, as both containerd and OCI documents describe blobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Desc {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Desc {
    pub fn from_oci(d: &oci_spec::image::Descriptor) -> Self {
        Self {
            media_type: d.media_type().to_string(),
            digest: d.digest().to_string(),
            size: d.size(),
        }
    }

    pub fn from_containerd(d: &ContainerdDescriptor) -> Self {
        Self {
            media_type: d.media_type.clone(),
            digest: d.digest.clone(),
            size: u64::try_from(d.size).unwrap_or(0),
        }
    }

    pub fn to_containerd(&self) -> ContainerdDescriptor {
        ContainerdDescriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: i64::try_from(self.size).unwrap_or(i64::MAX),
            annotations: HashMap::new(),
        }
    }
}

/// Where a blob's bytes come from.
#[derive(Clone, Copy, Debug)]
pub(super) enum BlobData<'a> {
    Memory(&'a [u8]),
    /// `size` bytes at `offset` in the file at `path`.
    File {
        path: &'a Path,
        offset: u64,
        size: u64,
    },
}

impl Containerd {
    /// Wraps `message` in a request that also carries `lease`, if any.
    pub(super) fn leased<T>(&self, message: T, lease: Option<&str>) -> Request<T> {
        with_lease(self.request(message), lease)
    }

    /// Creates a lease `id` that the GC deletes by itself after `expire` (so a crash
    /// leaves nothing behind for long). An existing lease of that id is fine.
    pub(super) async fn create_lease(&self, id: &str, expire: Duration) -> Result<(), ImageError> {
        let until = SystemTime::now() + expire;
        let labels = HashMap::from([
            (LEASE_EXPIRE_LABEL.to_owned(), rfc3339(until)),
            (
                crate::containerd::labels::MANAGED_BY.to_owned(),
                crate::containerd::labels::MANAGED_BY_VALUE.to_owned(),
            ),
        ]);
        let req = CreateLeaseRequest {
            id: id.to_owned(),
            labels,
        };
        match LeasesClient::new(self.channel())
            .create(self.request(req))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => Ok(()),
            Err(s) => Err(ImageError::containerd("lease create", id, s)),
        }
    }

    /// Puts an object (`kind`: `content` or `snapshots/<snapshotter>`) under `lease`,
    /// whether or not it exists yet: an object that is already there when an import
    /// finds it must be held too, or a GC between finding and using it takes it.
    pub(super) async fn lease_add(
        &self,
        lease: &str,
        id: &str,
        kind: &str,
    ) -> Result<(), ImageError> {
        let req = AddResourceRequest {
            id: lease.to_owned(),
            resource: Some(LeaseResource {
                id: id.to_owned(),
                r#type: kind.to_owned(),
            }),
        };
        LeasesClient::new(self.channel())
            .add_resource(self.request(req))
            .await
            .map_err(|s| ImageError::containerd("lease add", id, s))?;
        Ok(())
    }

    /// Deletes a lease; one already gone is fine. What it held becomes collectable.
    pub(super) async fn delete_lease(&self, id: &str) -> Result<(), ImageError> {
        let req = DeleteLeaseRequest {
            id: id.to_owned(),
            sync: false,
        };
        match LeasesClient::new(self.channel())
            .delete(self.request(req))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(ImageError::containerd("lease delete", id, s)),
        }
    }

    /// The content store's record of `digest`, or `None` when it has no such blob.
    pub(super) async fn content_info(&self, digest: &str) -> Result<Option<Info>, ImageError> {
        let req = InfoRequest {
            digest: digest.to_owned(),
        };
        match ContentClient::new(self.channel())
            .info(self.request(req))
            .await
        {
            Ok(resp) => Ok(resp.into_inner().info),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(ImageError::containerd("content info", digest, s)),
        }
    }

    /// Sets `labels` on the blob `digest`, touching only those missing or different
    /// in `current`.
    pub(super) async fn content_set_labels(
        &self,
        digest: &str,
        current: &HashMap<String, String>,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), ImageError> {
        let changed: HashMap<String, String> = labels
            .iter()
            .filter(|(k, v)| current.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        let paths = changed.keys().map(|k| format!("labels.{k}")).collect();
        let req = UpdateRequest {
            info: Some(Info {
                digest: digest.to_owned(),
                labels: changed,
                ..Info::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths }),
        };
        ContentClient::new(self.channel())
            .update(self.request(req))
            .await
            .map_err(|s| ImageError::containerd("content update", digest, s))?;
        Ok(())
    }

    /// Makes sure the blob `desc` is in the content store with `labels`: writes it from
    /// `data` unless it is already there, in which case only the labels are updated.
    pub(super) async fn ensure_blob(
        &self,
        lease: &str,
        desc: &Desc,
        data: BlobData<'_>,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), ImageError> {
        // Held first, then looked at: a blob found present stays present.
        self.lease_add(lease, &desc.digest, "content").await?;
        let mut attempt = 0;
        loop {
            if let Some(info) = self.content_info(&desc.digest).await? {
                return self
                    .content_set_labels(&desc.digest, &info.labels, labels)
                    .await;
            }
            match self.write_blob(lease, desc, data, labels).await {
                Ok(()) => return Ok(()),
                // Written meanwhile by someone else: loop to set the labels.
                Err(s) if s.code() == Code::AlreadyExists => {}
                // Another writer holds the ingest ref of this blob ("ref ... locked"):
                // wait for it to finish.
                Err(s)
                    if s.code() == Code::Unavailable
                        && s.message().contains("locked")
                        && attempt < LOCKED_RETRIES =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
                Err(s) => return Err(ImageError::containerd("content write", &desc.digest, s)),
            }
        }
    }

    /// One `Write` session: stat, the data in 1 MiB writes, then commit with the
    /// expected digest and size and the labels.
    async fn write_blob(
        &self,
        lease: &str,
        desc: &Desc,
        data: BlobData<'_>,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), Status> {
        // One ingest ref per blob, so concurrent writers of the same blob serialize.
        let reference = format!("nodelet-import-{}", desc.digest);
        let total = i64::try_from(desc.size).map_err(|_| Status::out_of_range("blob too large"))?;
        let message = |action: WriteAction, offset: i64, data: Vec<u8>| WriteContentRequest {
            action: action as i32,
            r#ref: reference.clone(),
            total,
            expected: desc.digest.clone(),
            offset,
            data,
            labels: HashMap::new(),
        };

        let (tx, rx) = mpsc::channel(2);
        // The server sends its response headers only after the first message, so it
        // must be queued before the call is awaited.
        tx.send(message(WriteAction::Stat, 0, Vec::new()))
            .await
            .map_err(|_| Status::internal("write stream closed"))?;
        let req = with_lease(
            self.request_with_timeout(ReceiverStream::new(rx), WRITE_TIMEOUT),
            Some(lease),
        );
        let mut responses = ContentClient::new(self.channel())
            .write(req)
            .await?
            .into_inner();
        next(&mut responses).await?;

        let mut offset: i64 = 0;
        let mut chunks = Chunks::open(data).await?;
        while let Some(chunk) = chunks.next().await? {
            let len = chunk.len() as i64;
            send(
                &tx,
                &mut responses,
                message(WriteAction::Write, offset, chunk),
            )
            .await?;
            let resp = next(&mut responses).await?;
            offset += len;
            if resp.offset != offset {
                return Err(Status::data_loss(format!(
                    "containerd is at offset {} after a write up to {offset}",
                    resp.offset
                )));
            }
        }
        if offset != total {
            return Err(Status::data_loss(format!(
                "read {offset} bytes of a {total}-byte blob"
            )));
        }
        let mut commit = message(WriteAction::Commit, offset, Vec::new());
        commit.labels = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        send(&tx, &mut responses, commit).await?;
        let resp = next(&mut responses).await?;
        if resp.digest != desc.digest {
            return Err(Status::data_loss(format!(
                "committed digest {} is not the expected {}",
                resp.digest, desc.digest
            )));
        }
        Ok(())
    }

    /// Opens (or resumes) the ingest `reference` of the blob `desc`, outside any lease:
    /// containerd then keeps a partial ingest for 24 hours, so a pull that fails half-way
    /// continues from where it stopped next time. Waits for another writer holding the
    /// same ingest. The ingest's current offset is [`Ingest::offset`].
    pub(super) async fn open_ingest(&self, reference: &str, desc: &Desc) -> Result<Ingest, Status> {
        let total = i64::try_from(desc.size).map_err(|_| Status::out_of_range("blob too large"))?;
        let mut attempt = 0;
        loop {
            let (tx, rx) = mpsc::channel(2);
            let stat = WriteContentRequest {
                action: WriteAction::Stat as i32,
                r#ref: reference.to_owned(),
                total,
                expected: desc.digest.clone(),
                offset: 0,
                data: Vec::new(),
                labels: HashMap::new(),
            };
            // Queued before the call: the server answers headers after a first message.
            tx.send(stat)
                .await
                .map_err(|_| Status::internal("write stream closed"))?;
            let req = self.request_with_timeout(ReceiverStream::new(rx), WRITE_TIMEOUT);
            let opened = async {
                let mut responses = ContentClient::new(self.channel())
                    .write(req)
                    .await?
                    .into_inner();
                let first = next(&mut responses).await?;
                Ok::<_, Status>((responses, first))
            }
            .await;
            match opened {
                Ok((responses, first)) => {
                    return Ok(Ingest {
                        tx,
                        responses,
                        reference: reference.to_owned(),
                        expected: desc.digest.clone(),
                        total,
                        offset: first.offset.clamp(0, total),
                    });
                }
                Err(s)
                    if s.code() == Code::Unavailable
                        && s.message().contains("locked")
                        && attempt < LOCKED_RETRIES * 5 =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(s) => return Err(s),
            }
        }
    }

    /// Drops the ingest `reference` and its partial data (after a digest mismatch, so
    /// the next attempt starts clean). One that does not exist is fine.
    pub(super) async fn abort_ingest(&self, reference: &str) -> Result<(), ImageError> {
        let req = containerd_client::services::v1::AbortRequest {
            r#ref: reference.to_owned(),
        };
        match ContentClient::new(self.channel())
            .abort(self.request(req))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(ImageError::containerd("content abort", reference, s)),
        }
    }

    /// Reads a whole blob of at most `max` bytes, checking its digest.
    pub(super) async fn read_blob(
        &self,
        desc: &Desc,
        what: &'static str,
        max: u64,
    ) -> Result<Vec<u8>, ImageError> {
        if desc.size > max {
            return Err(ImageError::BlobTooLarge {
                what,
                digest: desc.digest.clone(),
                size: desc.size,
            });
        }
        let err = |s| ImageError::containerd("content read", &desc.digest, s);
        let req = ReadContentRequest {
            digest: desc.digest.clone(),
            offset: 0,
            size: 0,
        };
        let mut stream = ContentClient::new(self.channel())
            .read(self.request(req))
            .await
            .map_err(err)?
            .into_inner();
        let mut data = Vec::with_capacity(usize::try_from(desc.size).unwrap_or(0));
        while let Some(chunk) = stream.message().await.map_err(err)? {
            data.extend_from_slice(&chunk.data);
            if data.len() as u64 > max {
                return Err(ImageError::BlobTooLarge {
                    what,
                    digest: desc.digest.clone(),
                    size: data.len() as u64,
                });
            }
        }
        check_digest(what, &desc.digest, &data)?;
        Ok(data)
    }
}

/// Checks that `data` hashes to `digest` (sha256 only; others are taken on trust).
pub(super) fn check_digest(what: &str, digest: &str, data: &[u8]) -> Result<(), ImageError> {
    if digest.starts_with("sha256:") {
        let actual = sha256_digest(data);
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                what: format!("content of {what} {digest}"),
                expected: digest.to_owned(),
                actual,
            });
        }
    }
    Ok(())
}

fn with_lease<T>(mut req: Request<T>, lease: Option<&str>) -> Request<T> {
    if let Some(Ok(value)) = lease.map(str::parse) {
        req.metadata_mut().insert(LEASE_HEADER, value);
    }
    req
}

async fn next(
    responses: &mut Streaming<WriteContentResponse>,
) -> Result<WriteContentResponse, Status> {
    responses
        .message()
        .await?
        .ok_or_else(|| Status::internal("containerd closed the write stream"))
}

/// Sends a message; if the stream is gone, the server's status says why.
async fn send(
    tx: &mpsc::Sender<WriteContentRequest>,
    responses: &mut Streaming<WriteContentResponse>,
    message: WriteContentRequest,
) -> Result<(), Status> {
    if tx.send(message).await.is_err() {
        next(responses).await?;
        return Err(Status::internal("containerd closed the write stream"));
    }
    Ok(())
}

/// An open ingest: one `Write` stream to containerd for one blob, written in order
/// from [`Ingest::offset`], then committed with the expected digest (containerd checks
/// it, also over bytes written by an earlier, interrupted session).
pub(super) struct Ingest {
    tx: mpsc::Sender<WriteContentRequest>,
    responses: Streaming<WriteContentResponse>,
    reference: String,
    expected: String,
    total: i64,
    offset: i64,
}

impl Ingest {
    /// Bytes already in the ingest: where the next write goes.
    pub fn offset(&self) -> u64 {
        u64::try_from(self.offset).unwrap_or(0)
    }

    /// Makes the next write start the blob over (containerd truncates the ingest when a
    /// write comes at offset 0).
    pub fn restart(&mut self) {
        self.offset = 0;
    }

    fn message(&self, action: WriteAction, data: Vec<u8>) -> WriteContentRequest {
        WriteContentRequest {
            action: action as i32,
            r#ref: self.reference.clone(),
            total: self.total,
            expected: self.expected.clone(),
            offset: self.offset,
            data,
            labels: HashMap::new(),
        }
    }

    /// Appends `data` at the current offset.
    pub async fn write(&mut self, data: Vec<u8>) -> Result<(), Status> {
        let len = i64::try_from(data.len()).map_err(|_| Status::out_of_range("chunk too large"))?;
        let msg = self.message(WriteAction::Write, data);
        send(&self.tx, &mut self.responses, msg).await?;
        let resp = next(&mut self.responses).await?;
        self.offset += len;
        if resp.offset != self.offset {
            return Err(Status::data_loss(format!(
                "containerd is at offset {} after a write up to {}",
                resp.offset, self.offset
            )));
        }
        Ok(())
    }

    /// Commits the blob with `labels`; containerd verifies size and digest.
    pub async fn commit(mut self, labels: &BTreeMap<String, String>) -> Result<(), Status> {
        let mut msg = self.message(WriteAction::Commit, Vec::new());
        msg.labels = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        send(&self.tx, &mut self.responses, msg).await?;
        let resp = next(&mut self.responses).await?;
        if resp.digest != self.expected {
            return Err(Status::data_loss(format!(
                "committed digest {} is not the expected {}",
                resp.digest, self.expected
            )));
        }
        Ok(())
    }
}

/// A blob's data in chunks of at most [`CHUNK`] bytes.
enum Chunks<'a> {
    Memory(std::slice::Chunks<'a, u8>),
    File(tokio::io::Take<tokio::fs::File>),
}

impl<'a> Chunks<'a> {
    async fn open(data: BlobData<'a>) -> Result<Self, Status> {
        match data {
            BlobData::Memory(bytes) => Ok(Self::Memory(bytes.chunks(CHUNK))),
            BlobData::File { path, offset, size } => {
                let io = |e: std::io::Error| Status::internal(format!("{}: {e}", path.display()));
                let mut file = tokio::fs::File::open(path).await.map_err(io)?;
                file.seek(std::io::SeekFrom::Start(offset))
                    .await
                    .map_err(io)?;
                Ok(Self::File(file.take(size)))
            }
        }
    }

    async fn next(&mut self) -> Result<Option<Vec<u8>>, Status> {
        match self {
            Self::Memory(chunks) => Ok(chunks.next().map(<[u8]>::to_vec)),
            Self::File(file) => {
                let mut buf = vec![0; CHUNK];
                let mut filled = 0;
                while filled < CHUNK {
                    let n = file
                        .read(&mut buf[filled..])
                        .await
                        .map_err(|e| Status::internal(e.to_string()))?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                buf.truncate(filled);
                Ok((filled > 0).then_some(buf))
            }
        }
    }
}

/// `t` as RFC 3339 in UTC to the second, e.g. `2025-01-02T03:04:05Z`.
pub(super) fn rfc3339(t: SystemTime) -> String {
    let ts = jiff::Timestamp::try_from(t).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn rfc3339_dates() {
        let at = |s| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_735_787_045), "2025-01-02T03:04:05Z");
    }
}
