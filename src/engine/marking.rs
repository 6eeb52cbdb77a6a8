//! How a portal marks a shared message, and the pure text rules of tag marking.
//!
//! A portal that lets dealsync create custom note properties marks a shared message with
//! `dealsync_visibility = shared` and keeps a copy's origin, reply-to and target in properties
//! ([`Marking::Property`]). HubSpot documents custom properties for notes nowhere
//! (HUBSPOT-API.md §0), so a portal that refuses them is run in **tag** mode
//! ([`Marking::Tag`]): a note is shared when its text *starts* with the tag (default
//! `#shared`, any case), also as the first word of the first HTML paragraph. Everything else
//! about the message lives in dealsync's store, and in the text a copy carries:
//!
//! - A copy written into a tag-mode portal starts with the tag (so the person reading it sees
//!   it is shared, and an edit of it syncs back) and ends with one footer paragraph naming
//!   where it came from, how to answer, and `ref:<origin>`: the origin key is the copy's
//!   nonce, how dealsync finds a copy it made before a crash among the deal's notes.
//! - On the HubSpot side, `#shared @acme …` names the partner a message is for (the
//!   configured partner name), as `dealsync_target` does in property mode.
//! - A message's **text** is its body without the tag (and target) and without the footer:
//!   what is compared (through its hash) and copied. `parse(render(t)) == t`.
//!
//! Replies: notes have no thread of their own in HubSpot, so a person in a tag-mode portal
//! answers with a new note that starts with the tag; it arrives as a new message on the same
//! deal. A comment copied *into* a tag-mode portal says in its footer that it is a reply.
//!
//! This module is pure: no I/O, no clock, no logging (bodies pass through here).

use serde::Deserialize;

/// The tag when none is configured.
pub const DEFAULT_TAG: &str = "#shared";

/// HubSpot's limit on `hs_note_body`.
pub const MAX_BODY_CHARS: usize = 65_536;

/// The start of a copy's footer paragraph: how dealsync tells its footer from the text.
const FOOTER_OPEN: &str = "<p>— shared by dealsync from ";

/// `[messages] marking`: what the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkingChoice {
    /// Property where the portal has dealsync's note properties, else tag.
    #[default]
    Auto,
    Property,
    Tag,
}

/// How one portal marks shared messages, as resolved at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marking {
    /// `dealsync_visibility` and friends. `unique` when `dealsync_origin` has unique values:
    /// then a `creating` copy can be looked up by origin (live or archived) anywhere.
    Property { unique: bool },
    /// The text starts with the tag; origin, reply-to and target are in the store.
    Tag,
}

impl Marking {
    pub fn label(self) -> &'static str {
        match self {
            Marking::Property { .. } => "property",
            Marking::Tag => "tag",
        }
    }

    pub fn is_tag(self) -> bool {
        self == Marking::Tag
    }
}

/// A validated tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag(String);

impl Default for Tag {
    fn default() -> Self {
        Tag(DEFAULT_TAG.to_owned())
    }
}

impl Tag {
    /// A tag is one word of at most 32 characters, with at least one letter or digit (what
    /// HubSpot's search tokens are made of), no spaces and no HTML (`<`, `>`, `&`).
    pub fn new(s: &str) -> Result<Tag, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err(format!("is empty: use a word such as \"{DEFAULT_TAG}\""));
        }
        if s.chars().count() > 32 {
            return Err("is longer than 32 characters".into());
        }
        if s.chars()
            .any(|c| c.is_whitespace() || matches!(c, '<' | '>' | '&' | '"' | '@'))
        {
            return Err("must be one word without spaces, HTML characters or @".into());
        }
        if !s.chars().any(char::is_alphanumeric) {
            return Err("needs at least one letter or digit (HubSpot's search finds words)".into());
        }
        Ok(Tag(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `CONTAINS_TOKEN` value that finds notes holding the tag. How HubSpot splits a body
    /// into tokens is not documented: `#shared` may stay one token or lose its `#`, and HTML
    /// around it may stick to it. The tag's letters and digits with a wildcard on both sides
    /// match each of those; a private note that merely holds the word is a false candidate,
    /// read and dropped (see the module docs of `messages`).
    pub fn search_value(&self) -> String {
        let core: String = self.0.chars().filter(|c| c.is_alphanumeric()).collect();
        format!("*{}*", core.to_lowercase())
    }
}

/// What a note's body says under tag marking.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Parsed {
    /// The text starts with the tag.
    pub shared: bool,
    /// `@name` right after the tag (not read on copies).
    pub target: Option<String>,
    /// The origin key a dealsync copy's footer names.
    pub reference: Option<String>,
    /// The message text: the body without tag, target and footer.
    pub text: String,
}

/// Where the first text of an HTML body starts: after leading whitespace, tags and
/// non-breaking spaces.
fn first_text(body: &str) -> usize {
    let mut i = 0;
    loop {
        let rest = &body[i..];
        let trimmed = rest.trim_start();
        i += rest.len() - trimmed.len();
        if trimmed.starts_with('<') {
            match trimmed.find('>') {
                Some(end) => i += end + 1,
                // An unclosed tag: no text follows.
                None => return body.len(),
            }
        } else if let Some(n) = nbsp_len(trimmed) {
            i += n;
        } else {
            return i;
        }
    }
}

fn nbsp_len(s: &str) -> Option<usize> {
    ["&nbsp;", "&#160;", "\u{a0}"]
        .iter()
        .find(|p| s.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p)))
        .map(|p| p.len())
}

/// One separator (a space or a non-breaking space) at the start of `s`, if any.
fn separator_len(s: &str) -> usize {
    if s.starts_with(' ') {
        1
    } else {
        nbsp_len(s).unwrap_or(0)
    }
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '-'
}

/// Removes dealsync's footer paragraph; returns the rest and the footer's `ref:`.
fn split_footer(body: &str) -> (String, Option<String>) {
    let Some(start) = body.find(FOOTER_OPEN) else {
        return (body.to_owned(), None);
    };
    let after = &body[start..];
    let end = after.find("</p>").map_or(after.len(), |e| e + "</p>".len());
    let footer = &after[..end];
    let reference = footer.rfind("ref:").map(|r| {
        footer[r + 4..]
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '<' && *c != ')')
            .collect::<String>()
    });
    let mut text = body[..start].to_owned();
    text.push_str(&after[end..]);
    (text, reference.filter(|r| r.contains(':')))
}

/// Reads a body under tag marking.
pub fn parse(body: &str, tag: &Tag) -> Parsed {
    let (body, reference) = split_footer(body);
    let at = first_text(&body);
    let t = tag.as_str();
    let starts = body
        .get(at..at + t.len())
        .is_some_and(|h| h.to_lowercase() == t.to_lowercase())
        && body[at + t.len()..]
            .chars()
            .next()
            .is_none_or(|c| !is_word_char(c));
    if !starts {
        return Parsed {
            shared: false,
            target: None,
            reference,
            text: body,
        };
    }
    let mut end = at + t.len();
    let mut target = None;
    // A copy's thread is its origin's: only an original names a target.
    if reference.is_none() {
        let sep = separator_len(&body[end..]);
        if let Some(name) = body[end + sep..].strip_prefix('@') {
            let len: usize = name
                .chars()
                .take_while(|c| is_word_char(*c) || *c == '.')
                .map(char::len_utf8)
                .sum();
            if len > 0 {
                target = Some(name[..len].to_owned());
                end += sep + 1 + len;
            }
        }
    }
    end += separator_len(&body[end..]);
    let mut text = body[..at].to_owned();
    text.push_str(&body[end..]);
    Parsed {
        shared: true,
        target,
        reference,
        text,
    }
}

/// The footer of a copy written into a tag-mode portal.
#[derive(Debug, Clone, Copy)]
pub struct Footer<'a> {
    /// The portal (configured name) the original is in.
    pub from: &'a str,
    /// The origin key, the copy's nonce.
    pub reference: &'a str,
    /// The copy is of a comment.
    pub reply: bool,
}

/// The body to write into a tag-mode portal for `text`: the tag (and target) at the start of
/// the first text, and the footer for a copy.
pub fn render(text: &str, tag: &Tag, target: Option<&str>, footer: Option<Footer<'_>>) -> String {
    let at = first_text(text);
    let mut out = String::with_capacity(text.len() + 160);
    out.push_str(&text[..at]);
    out.push_str(tag.as_str());
    out.push(' ');
    if let Some(t) = target {
        out.push('@');
        out.push_str(t);
        out.push(' ');
    }
    out.push_str(&text[at..]);
    if let Some(f) = footer {
        out.push_str(FOOTER_OPEN);
        out.push_str(f.from);
        if f.reply {
            out.push_str(", in reply to an earlier message");
        }
        out.push_str(". To answer, write a note that starts with ");
        out.push_str(tag.as_str());
        out.push_str(". ref:");
        out.push_str(f.reference);
        out.push_str("</p>");
    }
    out
}

/// Whether a body fits HubSpot's limit.
pub fn fits(body: &str) -> bool {
    body.chars().count() <= MAX_BODY_CHARS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag() -> Tag {
        Tag::default()
    }

    #[test]
    fn a_note_is_shared_only_when_its_text_starts_with_the_tag() {
        for (body, shared, text) in [
            ("#shared hello", true, "hello"),
            ("#SHARED hello", true, "hello"),
            ("<p>#shared hello</p>", true, "<p>hello</p>"),
            (
                "<div style=\"x\"><p>&nbsp;#Shared&nbsp;hi</p></div>",
                true,
                "<div style=\"x\"><p>&nbsp;hi</p></div>",
            ),
            ("#shared", true, ""),
            ("<p>#shared</p>", true, "<p></p>"),
            ("#shared: hi", true, ": hi"),
            ("hello #shared", false, "hello #shared"),
            (
                "<p>note</p><p>#shared hi</p>",
                false,
                "<p>note</p><p>#shared hi</p>",
            ),
            ("#sharedness hi", false, "#sharedness hi"),
            ("#share hi", false, "#share hi"),
            ("", false, ""),
            ("<p", false, "<p"),
            ("<<<>>>#shared x", false, "<<<>>>#shared x"),
        ] {
            let p = parse(body, &tag());
            assert_eq!((p.shared, p.text.as_str()), (shared, text), "{body:?}");
        }
    }

    #[test]
    fn a_target_follows_the_tag_on_originals_only() {
        let p = parse("<p>#shared @acme-eu hello</p>", &tag());
        assert_eq!(p.target.as_deref(), Some("acme-eu"));
        assert_eq!(p.text, "<p>hello</p>");
        let p = parse("#shared @ hello", &tag());
        assert_eq!((p.target, p.text.as_str()), (None, "@ hello"));
        let copy = render(
            "@bob hi",
            &tag(),
            None,
            Some(Footer {
                from: "acme",
                reference: "acme:7",
                reply: false,
            }),
        );
        let p = parse(&copy, &tag());
        assert_eq!(p.target, None, "a copy's text is never read as a target");
        assert_eq!(p.text, "@bob hi");
        assert_eq!(p.reference.as_deref(), Some("acme:7"));
    }

    #[test]
    fn parse_undoes_render() {
        let footer = Footer {
            from: "hubspot",
            reference: "hubspot:123",
            reply: true,
        };
        for text in [
            "",
            "hello",
            "<p>hello</p><p>two</p>",
            "   spaced",
            "<p>&nbsp;x</p>",
            "multi\nline",
            "ünïcödé ✓",
        ] {
            for target in [None, Some("acme")] {
                let body = render(text, &tag(), target, None);
                let p = parse(&body, &tag());
                assert!(p.shared, "{body:?}");
                assert_eq!((p.text.as_str(), p.target.as_deref()), (text, target));
            }
            let body = render(text, &tag(), None, Some(footer));
            let p = parse(&body, &tag());
            assert_eq!(p.text, text);
            assert_eq!(p.reference.as_deref(), Some("hubspot:123"));
            assert!(body.contains("in reply to"));
        }
    }

    #[test]
    fn a_footer_someone_edited_still_comes_off() {
        let body = "#shared hi<p>— shared by dealsync from acme. ref:acme:9</p>";
        let p = parse(body, &tag());
        assert_eq!(
            (p.text.as_str(), p.reference.as_deref()),
            ("hi", Some("acme:9"))
        );
        // The footer without a closing tag, or without a usable ref.
        let p = parse("#shared hi<p>— shared by dealsync from acme", &tag());
        assert_eq!((p.text.as_str(), p.reference), ("hi", None));
        let p = parse(
            "#shared hi<p>— shared by dealsync from acme. ref:</p>",
            &tag(),
        );
        assert_eq!(p.reference, None);
    }

    #[test]
    fn tags_are_checked() {
        assert!(Tag::new("").is_err());
        assert!(Tag::new("   ").is_err());
        assert!(Tag::new("#").is_err());
        assert!(Tag::new("two words").is_err());
        assert!(Tag::new("<b>").is_err());
        assert!(Tag::new(&"x".repeat(33)).is_err());
        assert_eq!(Tag::new(" [Partner] ").unwrap().as_str(), "[Partner]");
        assert_eq!(Tag::default().search_value(), "*shared*");
        let t = Tag::new("[Partner]").unwrap();
        assert!(parse("<p>[partner] hi</p>", &t).shared);
        assert_eq!(t.search_value(), "*partner*");
    }

    #[test]
    fn long_and_odd_bodies_do_not_panic() {
        let long = format!("#shared {}", "é".repeat(MAX_BODY_CHARS));
        let p = parse(&long, &tag());
        assert!(p.shared);
        assert!(!fits(&render(&p.text, &tag(), None, None)));
        assert!(fits(&"x".repeat(MAX_BODY_CHARS)));
        for body in [
            "&nbsp",
            "<p>&",
            "#shared&nbsp",
            "#shared @",
            "é#shared",
            "<p>é</p>",
        ] {
            let _ = parse(body, &tag());
        }
        let t = Tag::new("é").unwrap();
        assert!(parse("É x", &t).shared);
        assert!(!parse("e x", &t).shared);
    }
}
