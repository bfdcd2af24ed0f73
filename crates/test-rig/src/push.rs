//! Push images to a registry over the distribution HTTP API (plain http).
use crate::image::{BuiltImage, BuiltIndex};
use anyhow::{bail, Context, Result};
use reqwest::StatusCode;

#[derive(Clone)]
pub struct Pusher {
    pub addr: String,
    auth: Option<(String, String)>,
    client: reqwest::Client,
}

impl Pusher {
    /// `addr` = "127.0.0.1:PORT".
    pub fn new(addr: &str) -> Pusher {
        Pusher {
            addr: addr.to_string(),
            auth: None,
            client: reqwest::Client::new(),
        }
    }

    /// Basic auth on every request (docker-registry htpasswd uses a Basic challenge).
    pub fn with_auth(mut self, user: &str, pass: &str) -> Pusher {
        self.auth = Some((user.into(), pass.into()));
        self
    }

    /// Same addr/auth with a new HTTP client (a reqwest client must not be shared
    /// across tokio runtimes).
    pub fn fresh(&self) -> Pusher {
        Pusher {
            addr: self.addr.clone(),
            auth: self.auth.clone(),
            client: reqwest::Client::new(),
        }
    }

    fn req(&self, m: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let r = self.client.request(m, url);
        match &self.auth {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn blob_exists(&self, repo: &str, digest: &str) -> Result<bool> {
        let r = self
            .req(
                reqwest::Method::HEAD,
                &self.url(&format!("/v2/{repo}/blobs/{digest}")),
            )
            .send()
            .await?;
        Ok(r.status() == StatusCode::OK)
    }

    /// Monolithic upload (POST then PUT ?digest=); skipped if HEAD says it exists.
    pub async fn push_blob(&self, repo: &str, digest: &str, data: &[u8]) -> Result<()> {
        if self.blob_exists(repo, digest).await? {
            return Ok(());
        }
        let r = self
            .req(
                reqwest::Method::POST,
                &self.url(&format!("/v2/{repo}/blobs/uploads/")),
            )
            .send()
            .await?;
        if r.status() != StatusCode::ACCEPTED {
            bail!(
                "POST upload for {repo}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        let loc = r
            .headers()
            .get("location")
            .context("no Location header")?
            .to_str()?
            .to_string();
        let loc = if loc.starts_with('/') {
            self.url(&loc)
        } else {
            loc
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let put_url = format!("{loc}{sep}digest={digest}");
        let r = self
            .req(reqwest::Method::PUT, &put_url)
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await?;
        if r.status() != StatusCode::CREATED {
            bail!(
                "PUT blob {digest} to {repo}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// PUT /v2/<repo>/manifests/<reference> with Content-Type = media type.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<()> {
        let r = self
            .req(
                reqwest::Method::PUT,
                &self.url(&format!("/v2/{repo}/manifests/{reference}")),
            )
            .header("content-type", media_type)
            .body(bytes.to_vec())
            .send()
            .await?;
        if r.status() != StatusCode::CREATED {
            bail!(
                "PUT manifest {repo}:{reference}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// DELETE /v2/<repo>/manifests/<digest> (registry has delete enabled).
    pub async fn delete_manifest(&self, repo: &str, digest: &str) -> Result<()> {
        let r = self
            .req(
                reqwest::Method::DELETE,
                &self.url(&format!("/v2/{repo}/manifests/{digest}")),
            )
            .send()
            .await?;
        if r.status() != StatusCode::ACCEPTED {
            bail!("DELETE manifest {repo}@{digest}: {}", r.status());
        }
        Ok(())
    }

    /// DELETE /v2/<repo>/blobs/<digest> (to simulate a broken registry).
    pub async fn delete_blob(&self, repo: &str, digest: &str) -> Result<()> {
        let r = self
            .req(
                reqwest::Method::DELETE,
                &self.url(&format!("/v2/{repo}/blobs/{digest}")),
            )
            .send()
            .await?;
        if r.status() != StatusCode::ACCEPTED {
            bail!("DELETE blob {repo}@{digest}: {}", r.status());
        }
        Ok(())
    }

    /// Push config + layers, then the manifest by digest and (if given) by tag.
    pub async fn push_image(&self, repo: &str, tag: Option<&str>, img: &BuiltImage) -> Result<()> {
        for (d, b, _) in img.all_blobs() {
            self.push_blob(repo, &d, &b).await?;
        }
        self.put_manifest(
            repo,
            &img.manifest_digest,
            &img.manifest_bytes,
            &img.manifest_media_type,
        )
        .await?;
        if let Some(t) = tag {
            self.put_manifest(repo, t, &img.manifest_bytes, &img.manifest_media_type)
                .await?;
        }
        Ok(())
    }

    /// Push every child manifest (by digest), then the index by digest and tag.
    pub async fn push_index(&self, repo: &str, tag: Option<&str>, idx: &BuiltIndex) -> Result<()> {
        for m in &idx.manifests {
            self.push_image(repo, None, m).await?;
        }
        self.put_manifest(repo, &idx.digest, &idx.bytes, &idx.media_type)
            .await?;
        if let Some(t) = tag {
            self.put_manifest(repo, t, &idx.bytes, &idx.media_type)
                .await?;
        }
        Ok(())
    }
}

/// Push a single image to `registry_addr` ("127.0.0.1:PORT"), no auth.
pub async fn push(
    registry_addr: &str,
    repo: &str,
    tag: Option<&str>,
    img: &BuiltImage,
) -> Result<()> {
    Pusher::new(registry_addr).push_image(repo, tag, img).await
}

/// Push an index (children first) to `registry_addr`, no auth.
pub async fn push_index(
    registry_addr: &str,
    repo: &str,
    tag: Option<&str>,
    idx: &BuiltIndex,
) -> Result<()> {
    Pusher::new(registry_addr).push_index(repo, tag, idx).await
}

/// Basic-auth variant of [`push`].
pub async fn push_with_auth(
    registry_addr: &str,
    user: &str,
    pass: &str,
    repo: &str,
    tag: Option<&str>,
    img: &BuiltImage,
) -> Result<()> {
    Pusher::new(registry_addr)
        .with_auth(user, pass)
        .push_image(repo, tag, img)
        .await
}

/// Run a future to completion on a private runtime in a separate thread
/// (safe to call from sync tests and from inside another tokio runtime).
pub fn block_on<F, T>(f: F) -> T
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    })
    .join()
    .expect("block_on thread panicked")
}

/// Blocking [`Pusher::push_image`].
pub fn push_blocking(p: &Pusher, repo: &str, tag: Option<&str>, img: &BuiltImage) -> Result<()> {
    let (p, repo, tag, img) = (
        p.clone(),
        repo.to_string(),
        tag.map(str::to_string),
        img.clone(),
    );
    block_on(async move {
        let p = p.fresh();
        p.push_image(&repo, tag.as_deref(), &img).await
    })
}

/// Blocking [`Pusher::push_index`].
pub fn push_index_blocking(
    p: &Pusher,
    repo: &str,
    tag: Option<&str>,
    idx: &BuiltIndex,
) -> Result<()> {
    let (p, repo, tag, idx) = (
        p.clone(),
        repo.to_string(),
        tag.map(str::to_string),
        idx.clone(),
    );
    block_on(async move {
        let p = p.fresh();
        p.push_index(&repo, tag.as_deref(), &idx).await
    })
}
