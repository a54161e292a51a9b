//! The spec (README.md) and the code agree: every JSON example in it parses and serializes back,
//! every message type has an example, every error code has a row in the error table, and the
//! node-to-node link's section names every link kind and shows valid link messages.

use std::collections::BTreeSet;

use mixer_protocol::link::{
    LINK_AUDIENCE, LINK_HEADER_LEN, LINK_PATH_PREFIX, LinkAttach, LinkClaims, LinkHeader,
    LinkIdentity, LinkKind, MAX_LINK_HOPS, parse_attach, parse_close, parse_detach, parse_stream,
};
use mixer_protocol::{
    AudioFrame, ClientMessage, ErrorCode, ServerMessage, name_key, parse_client_message,
    parse_server_message,
};

/// Every JSON example in the spec (README.md) is a valid message that serializes back to
/// the same text, except that an example may leave out fields that have a default and are
/// always serialized (`mode`, `role`, `floor`).
///
/// `chat` and `room_info` name both a client and a server message, and a client parses a
/// server message's fields it does not know as unknown fields; so an example belongs to the
/// direction whose message shows exactly its fields, and exactly one direction must fit.
#[test]
fn spec_examples_parse() {
    let spec = include_str!("../README.md");
    let mut examples: Vec<&str> = spec
        .split("```json\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap_or_default().trim())
        .collect();
    // The example sessions' table rows hold one JSON message each, in backquotes.
    examples.extend(
        spec.lines()
            .filter(|line| line.starts_with("| ") && line.contains("`{\"type\""))
            .filter_map(|line| line.split('`').nth(1)),
    );
    assert!(
        examples.len() >= 60,
        "found only {} examples",
        examples.len()
    );
    let mut types = BTreeSet::new();
    // The link's bodies are checked by `spec_link_examples_parse`.
    for json in examples.into_iter().filter(|json| !is_link_body(json)) {
        let client = parse_client_message(json).ok().map(|msg| {
            assert_eq!(
                parse_client_message(&msg.to_json()),
                Ok(msg.clone()),
                "{json}"
            );
            (("client", msg.type_name()), msg.to_json())
        });
        let server = parse_server_message(json).ok().map(|msg| {
            assert_eq!(
                parse_server_message(&msg.to_json()),
                Ok(msg.clone()),
                "{json}"
            );
            (("server", msg.type_name()), msg.to_json())
        });
        let fits: Vec<_> = [client, server]
            .into_iter()
            .flatten()
            .filter(|(_, serialized)| shows_same_message(json, serialized))
            .collect();
        assert_eq!(fits.len(), 1, "{json} is serialized as {fits:?}");
        types.insert(fits[0].0);
    }
    // Every message type of each direction has an example.
    let all: BTreeSet<_> = ClientMessage::TYPES
        .iter()
        .map(|&t| ("client", t))
        .chain(ServerMessage::TYPES.iter().map(|&t| ("server", t)))
        .collect();
    assert_eq!(types, all);
}

/// Whether `example` is the text `serialized`, or the same message with only defaulted
/// fields left out.
fn shows_same_message(example: &str, serialized: &str) -> bool {
    if example == serialized {
        return true;
    }
    let example: serde_json::Value = serde_json::from_str(example).expect(example);
    let full: serde_json::Value = serde_json::from_str(serialized).expect(serialized);
    // Same fields, so the text must be the same too (field order, spacing).
    omitted_defaults(&example, &full).is_some_and(|omitted| omitted > 0)
}

/// How many defaulted fields `example` leaves out of `full`, or `None` if it differs from
/// `full` in any other way.
fn omitted_defaults(example: &serde_json::Value, full: &serde_json::Value) -> Option<usize> {
    use serde_json::Value;
    match (example, full) {
        (Value::Object(example), Value::Object(full)) => {
            if !example.keys().all(|k| full.contains_key(k)) {
                return None;
            }
            let mut omitted = 0;
            for (key, value) in full {
                match example.get(key) {
                    Some(shown) => omitted += omitted_defaults(shown, value)?,
                    None if ["mode", "role", "floor"].contains(&key.as_str()) => omitted += 1,
                    None => return None,
                }
            }
            Some(omitted)
        }
        (Value::Array(example), Value::Array(full)) if example.len() == full.len() => example
            .iter()
            .zip(full)
            .map(|(shown, value)| omitted_defaults(shown, value))
            .sum(),
        _ => (example == full).then_some(0),
    }
}

/// Every error code appears in the spec's error table.
#[test]
fn spec_documents_every_error_code() {
    let spec = include_str!("../README.md");
    for &code in ErrorCode::ALL {
        let row = format!("| `{}` |", code.as_str());
        assert!(spec.contains(&row), "README.md has no row for {code}");
    }
}

/// The spec's "Control budget" table gives every client message type the cost the code charges,
/// and its numbers for the bucket are the code's.
#[test]
fn spec_budget_table_matches_the_code() {
    let spec = include_str!("../README.md");
    let section = spec
        .split("## Control budget")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Control budget section");
    let prose = section.split_whitespace().collect::<Vec<_>>().join(" ");
    let burst = format!("holds {} tokens", mixer_protocol::CONTROL_BUDGET_BURST);
    let refill = format!(
        "refills at {} tokens per second",
        mixer_protocol::CONTROL_BUDGET_REFILL_PER_SECOND
    );
    assert!(prose.contains(&burst), "the spec should say it {burst}");
    assert!(prose.contains(&refill), "the spec should say it {refill}");
    let mut documented = std::collections::BTreeMap::new();
    for row in section
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| Cost"))
    {
        let mut cells = row.split('|').map(str::trim).filter(|c| !c.is_empty());
        let Some(Ok(cost)) = cells.next().map(str::parse::<u32>) else {
            continue;
        };
        let names = cells.next().unwrap_or_default();
        for name in names.split('`').skip(1).step_by(2) {
            if ClientMessage::TYPES.contains(&name) {
                assert!(documented.insert(name, cost).is_none(), "{name} twice");
            }
        }
        if names.contains("not valid JSON") {
            assert_eq!(cost, mixer_protocol::INVALID_MESSAGE_COST);
        }
    }
    let samples = crate::support::client_samples();
    for &name in ClientMessage::TYPES {
        let sample = samples
            .iter()
            .find(|m| m.type_name() == name)
            .unwrap_or_else(|| panic!("no sample of {name}"));
        assert_eq!(
            documented.get(name),
            Some(&sample.budget_cost()),
            "{name}: the spec and the code disagree on its cost"
        );
    }
}

/// The spec's section on the node-to-node link, from its heading to the next top-level one.
fn link_section() -> &'static str {
    include_str!("../README.md")
        .split("\n## Node-to-node link (edge nodes)\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Node-to-node link section")
}

/// Whether `json` is an object without a `"type"` that reads as a link body: an example of the
/// link's, not a control message.
fn is_link_body(json: &str) -> bool {
    let typed = serde_json::from_str::<serde_json::Value>(json)
        .is_ok_and(|value| value.get("type").is_some());
    !typed && !link_body_kinds(json).is_empty()
}

/// The link bodies `json` is, exactly: those it parses as and serializes back to, byte for byte.
fn link_body_kinds(json: &str) -> Vec<&'static str> {
    fn exactly<T: serde::Serialize>(parsed: Option<T>, json: &str) -> bool {
        parsed.is_some_and(|body| serde_json::to_string(&body).expect("serializes") == json)
    }
    let mut kinds = Vec::new();
    if exactly(parse_attach(json.as_bytes()).ok(), json) {
        kinds.push("attach");
    }
    if exactly(parse_detach(json.as_bytes()).ok(), json) {
        kinds.push("detach");
    }
    if exactly(serde_json::from_str::<LinkClaims>(json).ok(), json) {
        kinds.push("claims");
    }
    kinds
}

/// The link section's table of kinds has one row per [`LinkKind`], giving its byte, its name
/// and its direction, and no row for a kind the code does not have.
#[test]
fn spec_link_section_names_every_kind() {
    let mut documented = BTreeSet::new();
    for row in link_section().lines().filter(|l| l.starts_with("| `0x")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (byte, name, direction) = (cells[1], cells[2], cells[3]);
        let value = u8::from_str_radix(byte.trim_matches('`').trim_start_matches("0x"), 16)
            .unwrap_or_else(|_| panic!("{row}: not a byte"));
        let kind = LinkKind::from_byte(value).unwrap_or_else(|| panic!("{row}: no such kind"));
        assert_eq!(name, format!("{kind:?}"), "{row}");
        assert_eq!(direction, if kind.is_up() { "up" } else { "down" }, "{row}");
        assert_eq!(
            byte,
            format!("`0x{value:02x}`"),
            "{row}: write bytes as `0x01`"
        );
        assert!(documented.insert(value), "{row}: the kind has two rows");
    }
    let all: BTreeSet<u8> = LinkKind::ALL.iter().map(|&kind| kind as u8).collect();
    assert_eq!(documented, all, "the kinds table and LinkKind::ALL differ");
}

/// The link section gives the code's constants: the path, the token's audience, the header's
/// length and the most hops.
#[test]
fn spec_link_constants_match_the_code() {
    let prose = link_section()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for phrase in [
        format!("`GET {LINK_PATH_PREFIX}ROOM`"),
        format!("Always `\"{LINK_AUDIENCE}\"`"),
        format!("a {LINK_HEADER_LEN}-byte header"),
        format!("`hops` above {MAX_LINK_HOPS} (`MAX_LINK_HOPS`)"),
    ] {
        assert!(
            prose.contains(&phrase),
            "the link section should say {phrase}"
        );
    }
}

/// Every link body the link section shows (its JSON blocks, and the objects in backquotes in its
/// tables' rows but for the Attach table's `identity` templates) is exactly one of the link's
/// JSON bodies, serialized as the code serializes it; each kind of body has an example, and an
/// identity by name is the name's key.
#[test]
fn spec_link_examples_parse() {
    let section = link_section();
    let mut examples: Vec<&str> = section
        .split("```json\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap_or_default().trim())
        .collect();
    examples.extend(
        section
            .lines()
            .filter(|line| line.starts_with("| "))
            .flat_map(|line| line.split('`').skip(1).step_by(2))
            .filter(|cell| cell.starts_with("{\"") && !cell.starts_with("{\"type\""))
            .filter(|cell| !cell.starts_with("{\"kind\"")),
    );
    let mut seen = BTreeSet::new();
    for json in &examples {
        let kinds = link_body_kinds(json);
        assert_eq!(kinds.len(), 1, "{json} is read as {kinds:?}");
        seen.insert(kinds[0]);
        if let Ok(LinkAttach {
            identity: LinkIdentity::Name(key),
            name,
            ..
        }) = parse_attach(json.as_bytes())
        {
            assert_eq!(
                key,
                name_key(&name),
                "{json}: the identity is the name's key"
            );
        }
    }
    assert_eq!(seen, BTreeSet::from(["attach", "detach", "claims"]));
    assert!(
        examples.len() >= 10,
        "found only {} examples",
        examples.len()
    );
}

/// Every hex dump in the link section is a valid link message: its annotated lines add up to the
/// bytes under them, at the offsets they give, and its body is of its kind's form.
#[test]
fn spec_link_hex_dumps_are_link_messages() {
    let mut dumps = 0;
    for block in link_section().split("```text\n").skip(1) {
        let block = block.split("```").next().unwrap_or_default();
        let Some((annotated, bytes)) = block.trim_end().rsplit_once("\n\n") else {
            continue;
        };
        let message = hex(bytes);
        let mut offset = 0;
        let mut joined = Vec::new();
        for line in annotated.lines().skip(1) {
            let (at, rest) = line.split_once("    ").expect(line);
            assert_eq!(usize::from_str_radix(at, 16), Ok(offset), "{line}");
            let field: Vec<u8> = rest
                .split_whitespace()
                .map_while(|word| (word.len() == 2).then(|| u8::from_str_radix(word, 16).ok())?)
                .collect();
            offset += field.len();
            joined.extend(field);
        }
        assert_eq!(
            joined, message,
            "the annotated bytes and the dump differ:\n{block}"
        );
        let header = LinkHeader::parse(&message).unwrap_or_else(|e| panic!("{e}:\n{block}"));
        let body = &message[LINK_HEADER_LEN..];
        match header.kind {
            LinkKind::Attach => assert!(parse_attach(body).is_ok(), "{block}"),
            LinkKind::Detach => assert!(parse_detach(body).is_ok(), "{block}"),
            LinkKind::Close => assert!(parse_close(body).is_ok(), "{block}"),
            LinkKind::Stream => assert!(parse_stream(body).is_ok(), "{block}"),
            LinkKind::Shared | LinkKind::Own | LinkKind::Audio => {
                let frame = AudioFrame::parse(body).unwrap_or_else(|e| panic!("{e}:\n{block}"));
                let shared = header.kind == LinkKind::Shared;
                assert!(
                    !(shared && frame.header.flags.marker()),
                    "marker set:\n{block}"
                );
            }
            LinkKind::Request | LinkKind::Send | LinkKind::Broadcast => {
                assert!(std::str::from_utf8(body).is_ok(), "{block}")
            }
        }
        let session_ok = match header.kind {
            LinkKind::Shared => header.session == 0,
            LinkKind::Broadcast => true,
            _ => header.session != 0,
        };
        assert!(session_ok, "session {}:\n{block}", header.session);
        dumps += 1;
    }
    assert!(dumps >= 3, "found only {dumps} hex dumps");
}

/// Bytes written as two hex digits each, separated by spaces.
fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).unwrap_or_else(|_| panic!("{byte}: not hex")))
        .collect()
}
