//! Notes and files in sandbox portals, for the message tests.

use serde_json::{json, Value};

use super::Portal;

/// Creates a note on a deal; `props` adds to or overrides the defaults.
pub async fn note(p: &Portal, deal: &str, body: &str, shared: bool, props: Value) -> String {
    let mut properties = json!({
        "hs_note_body": body,
        "hs_timestamp": "2026-11-26T10:00:00.000Z",
        dealsync::properties::VISIBILITY: if shared { "shared" } else { "private" },
    });
    for (k, v) in props.as_object().into_iter().flatten() {
        properties[k] = v.clone();
    }
    let a = p
        .post(
            "/crm/v3/objects/notes",
            json!({
                "properties": properties,
                "associations": [{ "to": { "id": deal }, "types": [{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 214 }] }],
            }),
        )
        .await;
    assert_eq!(a.status, 201, "create note: {}", a.text);
    a.body["id"].as_str().expect("note id").to_owned()
}

pub async fn upload(p: &Portal, name: &str, content: Vec<u8>) -> String {
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(content).file_name(name.to_owned()),
        )
        .text("fileName", name.to_owned())
        .text("folderPath", "/tests")
        .text("options", r#"{"access":"PRIVATE"}"#);
    let a = p
        .send(
            p.req(reqwest::Method::POST, "/files/v3/files")
                .multipart(form),
        )
        .await;
    assert_eq!(a.status, 201, "upload: {}", a.text);
    a.body["id"].as_str().expect("file id").to_owned()
}

/// Every live note of a portal with the properties tests look at.
pub async fn notes(p: &Portal) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = "/crm/v3/objects/notes?limit=100&properties=hs_note_body,hs_attachment_ids,dealsync_origin,dealsync_reply_to,dealsync_visibility,dealsync_target&associations=deals".to_owned();
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let a = p.get(&path).await;
        assert_eq!(a.status, 200, "list notes: {}", a.text);
        out.extend(a.body["results"].as_array().cloned().unwrap_or_default());
        match a.body.pointer("/paging/next/after").and_then(Value::as_str) {
            Some(n) => after = Some(n.to_owned()),
            None => return out,
        }
    }
}

pub fn prop<'a>(n: &'a Value, name: &str) -> Option<&'a str> {
    n["properties"][name].as_str().filter(|s| !s.is_empty())
}

pub async fn file_live(p: &Portal, id: &str) -> bool {
    p.get(&format!("/files/v3/files/{id}")).await.status == 200
}

pub async fn file_content(p: &Portal, id: &str) -> Vec<u8> {
    let r = p
        .http
        .get(p.url(&format!("/files/v3/files/{id}/download")))
        .bearer_auth(&p.info.token)
        .send()
        .await
        .expect("download");
    assert_eq!(r.status(), 200);
    r.bytes().await.expect("bytes").to_vec()
}

pub fn attachments(n: &Value) -> Vec<String> {
    prop(n, "hs_attachment_ids")
        .unwrap_or_default()
        .split(';')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The origin a note says it was copied from: `dealsync_origin` (property marking), or the
/// `ref:` of dealsync's footer (tag marking).
pub fn origin(n: &Value) -> Option<String> {
    prop(n, dealsync::properties::ORIGIN)
        .map(str::to_owned)
        .or_else(|| {
            let body = prop(n, "hs_note_body")?;
            dealsync::engine::marking::parse(body, &Default::default()).reference
        })
}

/// Puts a portal in tag marking as a real one that refuses custom note properties would be:
/// the features off, then `dealsync setup` makes only its deal properties.
pub fn refuse_note_properties(sb: &dealsync::sandbox::SandboxHandle, name: &str) {
    sb.set_features(name, dealsync::sandbox::Features::without_note_features());
}

/// The note ids whose body the portal has served in a read or search answer.
pub async fn bodies_served(p: &Portal) -> std::collections::BTreeSet<String> {
    p.counters().await["note_bodies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// Creates a note on a deal as a person in a tag-mode portal writes it: a body (and `extra`
/// properties), no dealsync property.
pub async fn plain_note(p: &Portal, deal: &str, body: &str, extra: Value) -> String {
    let mut props = json!({ "hs_note_body": body, "hs_timestamp": "2026-12-05T10:00:00.000Z" });
    for (k, v) in extra.as_object().into_iter().flatten() {
        props[k] = v.clone();
    }
    let a = p
        .post(
            "/crm/v3/objects/notes",
            json!({
                "properties": props,
                "associations": [{ "to": { "id": deal }, "types": [{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 214 }] }],
            }),
        )
        .await;
    assert_eq!(a.status, 201, "create note: {}", a.text);
    a.body["id"].as_str().expect("note id").to_owned()
}
