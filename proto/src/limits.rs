//! Limits shared by client and broker (DESIGN.md §7). Both sides enforce them, so
//! they live with the wire format. Broker-only tunables live in the broker's
//! config; these are the ones a client must also know to build valid requests.

/// Largest encoded record batch a producer may send or the log will store.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Batches an idempotent producer may have in flight on one partition: the
/// broker remembers this many of each producer's latest batches per
/// partition (Kafka keeps 5), so a retry of any of them is recognised and
/// answered with its original offset. Also the most requests a broker reads
/// ahead of its answers on one `ProduceStream`.
pub const MAX_IN_FLIGHT_BATCHES: usize = 5;

/// Largest single record (key + value + headers, encoded) inside a batch.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Default upper bound on the bytes one fetch response carries.
pub const FETCH_MAX_BYTES: usize = 8 * 1024 * 1024;

/// HTTP/2 flow-control window of one stream, both directions: a whole
/// largest batch (plus framing) fits, so a produce or fetch message never
/// waits on window updates mid-message. The defaults (64 KiB) cost a round
/// trip per 64 KiB, which dominated large requests.
pub const HTTP2_STREAM_WINDOW_BYTES: u32 = (MAX_BATCH_BYTES + 1024 * 1024) as u32;

/// HTTP/2 flow-control window of one connection: bounds the bytes a peer can
/// have in flight toward us over it, whatever its number of streams.
pub const HTTP2_CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;

/// Largest HTTP/2 frame either side accepts. The protocol default (16 KiB)
/// splits an 8 MiB fetch response into 512 DATA frames, and the receiver
/// then reads them 16 KiB per `recv`: on loopback that framing, not the
/// copying, was the largest cost of a consumer catching up. 1 MiB frames
/// keep a small message on the same connection (a produce ack) behind at
/// most one large frame.
pub const HTTP2_MAX_FRAME_BYTES: u32 = 1024 * 1024;

/// Longest topic name, in bytes (ASCII only, see `topic_name_error`).
pub const MAX_TOPIC_NAME_BYTES: usize = 249;

/// Longest consumer group id, in bytes.
pub const MAX_GROUP_ID_BYTES: usize = 249;

/// Why a topic or group name is not acceptable, or `None` if it is.
///
/// Names become directory names, so they are restricted to a portable set:
/// ASCII letters, digits, `.`, `_`, `-`; not `.` or `..`.
pub fn name_error(kind: &str, name: &str, max_bytes: usize) -> Option<String> {
    if name.is_empty() {
        return Some(format!("{kind} name must not be empty"));
    }
    if name.len() > max_bytes {
        return Some(format!(
            "{kind} name is {} bytes long; the limit is {max_bytes}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Some(format!("{kind} name must not be '.' or '..'"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Some(format!(
            "{kind} name {name:?} contains {bad:?}; use only ASCII letters, digits, '.', '_' and '-'"
        ));
    }
    None
}

/// Why `name` is not a valid topic name, or `None` if it is.
pub fn topic_name_error(name: &str) -> Option<String> {
    name_error("topic", name, MAX_TOPIC_NAME_BYTES)
}

/// Why `group` is not a valid consumer group id, or `None` if it is.
pub fn group_id_error(group: &str) -> Option<String> {
    name_error("group", group, MAX_GROUP_ID_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_are_checked_for_length_and_charset() {
        assert_eq!(topic_name_error("orders.v1_eu-west"), None);
        assert!(topic_name_error("").is_some());
        assert!(topic_name_error("..").is_some());
        assert!(topic_name_error("a/b").unwrap().contains("'/'"));
        assert!(topic_name_error("naïve").is_some());
        assert!(
            topic_name_error(&"x".repeat(250))
                .unwrap()
                .contains("250 bytes")
        );
        assert_eq!(topic_name_error(&"x".repeat(249)), None);
    }
}
