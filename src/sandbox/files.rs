//! Files v3: multipart upload, metadata, signed download URLs, download and delete.
//!
//! Signed URLs point at `/_sandbox/signed/...` (HubSpot's point at its CDN); they need no
//! token, expire, and are signed with the portal's secret so they cannot be guessed.

use std::sync::Arc;

use axum::extract::{Multipart, Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::gate::Ctx;
use super::model::*;
use super::objects::reply;
use super::params::{too_large, Query};
use super::{Portal, Shared};

fn file_json(shared: &Shared, _portal: &Portal, f: &FileRec) -> Value {
    let mut v = json!({
        "id": f.id.to_string(),
        "name": f.name,
        "extension": f.extension,
        "size": f.content.len(),
        "path": f.path,
        "access": f.access,
        "type": file_type(&f.extension),
        "url": format!("{}/files/v3/files/{}/download", shared.base_url, f.id),
        "isUsableInContent": true,
        "createdAt": iso(f.created_ms),
        "updatedAt": iso(f.updated_ms),
        "archived": f.archived_ms.is_some(),
    });
    if let Some(a) = f.archived_ms {
        v["archivedAt"] = json!(iso(a));
    }
    v
}

fn file_type(ext: &str) -> &'static str {
    match ext.to_ascii_lowercase().as_str() {
        "png" | "jpg" | "jpeg" | "gif" | "svg" | "webp" => "IMG",
        "pdf" | "doc" | "docx" | "txt" | "csv" | "xls" | "xlsx" | "ppt" | "pptx" => "DOCUMENT",
        "mp4" | "mov" => "MOVIE",
        "mp3" | "wav" => "AUDIO",
        _ => "OTHER",
    }
}

fn bad_upload(msg: impl Into<String>) -> ApiError {
    ApiError::validation(msg)
}

pub async fn upload(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> ApiResult<Response> {
    let mut mp =
        multipart.map_err(|e| bad_upload(format!("expected a multipart/form-data upload: {e}")))?;
    let limit = shared.config.max_file_bytes;
    let (mut content, mut part_name, mut file_name, mut folder_path, mut folder_id, mut options) =
        (None, None, None, None, None, None);
    loop {
        let field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large(limit)),
            Err(e) => return Err(bad_upload(format!("malformed multipart body: {e}"))),
        };
        let name = field.name().unwrap_or_default().to_owned();
        if name == "file" {
            part_name = field.file_name().map(str::to_owned);
            let bytes = field.bytes().await.map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    too_large(limit)
                } else {
                    bad_upload(format!("cannot read the file part: {e}"))
                }
            })?;
            content = Some(bytes);
        } else {
            let text = field
                .text()
                .await
                .map_err(|e| bad_upload(format!("cannot read part {name}: {e}")))?;
            match name.as_str() {
                "fileName" => file_name = Some(text),
                "folderPath" => folder_path = Some(text),
                "folderId" => folder_id = Some(text),
                "options" => options = Some(text),
                _ => {}
            }
        }
    }
    let content = content.ok_or_else(|| bad_upload("the upload has no 'file' part"))?;
    if folder_path.is_none() && folder_id.is_none() {
        return Err(bad_upload("one of folderPath or folderId is required"));
    }
    let options: Value = serde_json::from_str(options.as_deref().unwrap_or("")).map_err(|_| {
        bad_upload("options must be a JSON string such as {\"access\":\"PRIVATE\"}")
    })?;
    let access = options
        .get("access")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_upload("options.access is required (PRIVATE, PUBLIC_INDEXABLE or PUBLIC_NOT_INDEXABLE, ...)"))?
        .to_owned();
    const ACCESS: [&str; 6] = [
        "PUBLIC_INDEXABLE",
        "PUBLIC_NOT_INDEXABLE",
        "HIDDEN_INDEXABLE",
        "HIDDEN_NOT_INDEXABLE",
        "HIDDEN_PRIVATE",
        "PRIVATE",
    ];
    if !ACCESS.contains(&access.as_str()) {
        return Err(bad_upload(format!(
            "options.access {access} is not one of {}",
            ACCESS.join(", ")
        )));
    }
    let full = file_name.or(part_name).unwrap_or_else(|| "upload".into());
    let (name, extension) = match full.rsplit_once('.') {
        Some((n, e)) if !n.is_empty() => (n.to_owned(), e.to_owned()),
        _ => (full.clone(), String::new()),
    };
    let folder =
        folder_path.unwrap_or_else(|| format!("/folder-{}", folder_id.unwrap_or_default()));
    let folder = format!("/{}", folder.trim_matches('/'));
    let now = shared.now_ms();
    let body = {
        let mut data = ctx.portal.data.lock();
        let id = data.alloc_id();
        let rec = FileRec {
            id,
            path: format!("{}/{}", folder.trim_end_matches('/'), full),
            name,
            extension,
            folder_path: folder,
            access,
            created_ms: now,
            updated_ms: now,
            archived_ms: None,
            content,
        };
        let body = file_json(&shared, &ctx.portal, &rec);
        data.files.insert(id, rec);
        body
    };
    shared.touched();
    Ok(reply(StatusCode::CREATED, body))
}

fn live_file<'a>(data: &'a PortalData, id: &str) -> ApiResult<&'a FileRec> {
    id.parse::<u64>()
        .ok()
        .and_then(|i| data.files.get(&i))
        .filter(|f| f.archived_ms.is_none())
        .ok_or_else(|| {
            ApiError::not_found(format!("File {id} not found")).with_context(json!({ "id": [id] }))
        })
}

pub async fn read(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let data = ctx.portal.data.lock();
    let f = live_file(&data, &id)?;
    Ok(reply(StatusCode::OK, file_json(&shared, &ctx.portal, f)))
}

pub async fn archive(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let now = shared.now_ms();
    {
        let mut data = ctx.portal.data.lock();
        live_file(&data, &id)?;
        if let Some(f) = id.parse::<u64>().ok().and_then(|i| data.files.get_mut(&i)) {
            f.archived_ms = Some(now);
            // The content is gone for good; only the tombstone stays.
            f.content = bytes::Bytes::new();
        }
    }
    shared.touched();
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn signature(portal: &Portal, file_id: u64, expires: i64) -> String {
    crate::signature::sign_v3(
        &portal.info.webhook_secret,
        "GET",
        &format!("file:{}:{file_id}", portal.info.portal_id),
        b"",
        expires,
    )
    .replace(['+', '/', '='], "")
}

pub async fn signed_url(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let q = Query::parse(q.as_deref());
    let secs: i64 = match q.get("expirationSeconds") {
        None => 3600,
        Some(s) => s
            .parse()
            .ok()
            .filter(|s| (1..=86_400 * 7).contains(s))
            .ok_or_else(|| {
                ApiError::validation("expirationSeconds must be between 1 and 604800")
            })?,
    };
    let data = ctx.portal.data.lock();
    let f = live_file(&data, &id)?;
    let expires = shared.now_ms() + secs * 1000;
    let sig = signature(&ctx.portal, f.id, expires);
    let url = format!(
        "{}/_sandbox/signed/{}/{}?expires={expires}&sig={sig}",
        shared.base_url, ctx.portal.info.portal_id, f.id
    );
    Ok(reply(
        StatusCode::OK,
        json!({
            "url": url,
            "expiresAt": iso(expires),
            "name": f.name,
            "extension": f.extension,
            "type": file_type(&f.extension),
            "size": f.content.len(),
        }),
    ))
}

fn content_response(f: &FileRec) -> Response {
    let name = if f.extension.is_empty() {
        f.name.clone()
    } else {
        format!("{}.{}", f.name, f.extension)
    };
    let disposition = format!("attachment; filename=\"{}\"", name.replace('"', ""));
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        f.content.clone(),
    )
        .into_response()
}

pub async fn download(
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let data = ctx.portal.data.lock();
    Ok(content_response(live_file(&data, &id)?))
}

/// `GET /_sandbox/signed/{portal_id}/{file_id}?expires&sig`: the target of signed URLs.
pub async fn signed_download(
    State(shared): State<Arc<Shared>>,
    Path((portal_id, id)): Path<(u64, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let q = Query::parse(q.as_deref());
    let denied = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "signed URL is invalid or expired; ask for a new one",
        )
    };
    let portal = shared
        .portals
        .iter()
        .find(|p| p.info.portal_id == portal_id)
        .ok_or_else(denied)?;
    let expires: i64 = q
        .get("expires")
        .and_then(|e| e.parse().ok())
        .ok_or_else(denied)?;
    let data = portal.data.lock();
    let f = live_file(&data, &id)?;
    let sig = signature(portal, f.id, expires);
    if q.get("sig") != Some(sig.as_str()) || expires < shared.now_ms() {
        return Err(denied());
    }
    Ok(content_response(f))
}
