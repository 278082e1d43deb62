//! Which sealed segments retention deletes. Retention only ever removes a
//! prefix of whole sealed segments, oldest first; the active segment is never
//! deleted (the log rolls it first when it has expired by age).

/// What retention needs to know of one sealed segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SegmentFacts {
    pub size_bytes: u64,
    pub max_timestamp: i64,
}

/// How many of the oldest sealed segments to delete.
///
/// By size: delete while the log stays at or above `retention_bytes` without
/// the segment (as Kafka does, the log is never cut below its retention size).
/// By age: delete while the segment's newest record is older than
/// `now_ms - retention_ms`. A segment goes when either rule says so.
/// `facts(i)` is asked lazily, in order, for sealed segment `i`.
pub(crate) fn segments_to_delete<E>(
    sealed: usize,
    total_bytes: u64,
    retention_bytes: Option<u64>,
    retention_ms: Option<u64>,
    now_ms: i64,
    mut facts: impl FnMut(usize) -> Result<SegmentFacts, E>,
) -> Result<usize, E> {
    let cutoff =
        retention_ms.map(|ms| now_ms.saturating_sub(i64::try_from(ms).unwrap_or(i64::MAX)));
    let mut remaining = total_bytes;
    let mut count = 0;
    while count < sealed {
        let f = facts(count)?;
        let over_size =
            retention_bytes.is_some_and(|limit| remaining.saturating_sub(f.size_bytes) >= limit);
        let expired = cutoff.is_some_and(|cutoff| f.max_timestamp < cutoff);
        if !(over_size || expired) {
            break;
        }
        remaining -= f.size_bytes.min(remaining);
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(
        sizes: &[(u64, i64)],
        active: u64,
        bytes: Option<u64>,
        ms: Option<u64>,
        now: i64,
    ) -> usize {
        let total = sizes.iter().map(|s| s.0).sum::<u64>() + active;
        segments_to_delete::<()>(sizes.len(), total, bytes, ms, now, |i| {
            Ok(SegmentFacts {
                size_bytes: sizes[i].0,
                max_timestamp: sizes[i].1,
            })
        })
        .unwrap()
    }

    #[test]
    fn size_retention_never_cuts_below_the_limit() {
        let segs = [(100, 0), (100, 0), (100, 0)];
        assert_eq!(plan(&segs, 50, Some(300), None, 0), 0);
        assert_eq!(plan(&segs, 50, Some(250), None, 0), 1);
        assert_eq!(plan(&segs, 50, Some(150), None, 0), 2);
        assert_eq!(plan(&segs, 50, Some(0), None, 0), 3);
        assert_eq!(plan(&segs, 50, None, None, 0), 0);
    }

    #[test]
    fn age_retention_deletes_only_an_expired_prefix() {
        let segs = [(10, 100), (10, 500), (10, 200)];
        // Cutoff 1000 - 600 = 400: the first is expired, the second is not, and
        // the third (older than the second) is kept because only a prefix goes.
        assert_eq!(plan(&segs, 0, None, Some(600), 1000), 1);
        assert_eq!(plan(&segs, 0, None, Some(100), 1000), 3);
    }

    #[test]
    fn either_rule_is_enough() {
        // Expired by age though small.
        assert_eq!(
            plan(&[(100, 100), (100, 900)], 0, Some(1000), Some(500), 1000),
            1
        );
        // Fresh but over size.
        assert_eq!(
            plan(&[(100, 900), (100, 900)], 100, Some(150), Some(500), 1000),
            1
        );
    }
}
