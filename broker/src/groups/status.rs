//! Consumer health from the shape of its commits, in the spirit of Burrow's
//! evaluation rules: no fixed lag thresholds, only how committed offsets and
//! lag moved over the last few commits, and how long ago the last one was.
//!
//! Rules, first match wins, for one group partition:
//! 1. Nothing left to consume (lag 0) → OK.
//! 2. The group has no live member → STOPPED.
//! 3. The time since the last commit exceeds the time the window of commits
//!    spans → STOPPED (commits stopped while records wait).
//! 4. The committed offset went backwards within the window → REWINDING.
//! 5. The lag was zero at some commit in the window → OK.
//! 6. The offset did not move across the window while lag did not shrink →
//!    STALLED (committing, but stuck on one record).
//! 7. Offsets moved but lag never shrank across a full window → WARNING
//!    (falling behind).
//! 8. Otherwise → OK.

use std::collections::VecDeque;
use std::fmt;

/// Commits remembered per group partition.
pub const STATUS_WINDOW_COMMITS: usize = 10;

/// Commits needed before falling-behind (WARNING) is judged.
const WARNING_MIN_COMMITS: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    Ok,
    Warning,
    Rewinding,
    Stalled,
    Stopped,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warning => "WARNING",
            Status::Rewinding => "REWINDING",
            Status::Stalled => "STALLED",
            Status::Stopped => "STOPPED",
        }
    }

    pub const ALL: [Status; 5] = [
        Status::Ok,
        Status::Warning,
        Status::Rewinding,
        Status::Stalled,
        Status::Stopped,
    ];
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One commit as the broker saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub time_ms: i64,
    pub offset: u64,
    /// High watermark minus offset when the commit arrived.
    pub lag: u64,
}

/// The last commits of one group partition.
#[derive(Debug, Clone, Default)]
pub struct CommitWindow {
    samples: VecDeque<Sample>,
}

impl CommitWindow {
    pub fn push(&mut self, sample: Sample) {
        if self.samples.len() == STATUS_WINDOW_COMMITS {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Applies the rules above. `lag_now` is the lag at the latest committed
    /// offset against the current high watermark.
    pub fn evaluate(&self, lag_now: u64, has_members: bool, now_ms: i64) -> Status {
        if lag_now == 0 {
            return Status::Ok;
        }
        if !has_members {
            return Status::Stopped;
        }
        let (Some(first), Some(last)) = (self.samples.front(), self.samples.back()) else {
            return Status::Ok;
        };
        if self.samples.len() >= 2 && now_ms - last.time_ms > last.time_ms - first.time_ms {
            return Status::Stopped;
        }
        let pairs = || self.samples.iter().zip(self.samples.iter().skip(1));
        if pairs().any(|(a, b)| b.offset < a.offset) {
            return Status::Rewinding;
        }
        if self.samples.iter().any(|s| s.lag == 0) {
            return Status::Ok;
        }
        let lag_never_shrinks = pairs().all(|(a, b)| b.lag >= a.lag) && lag_now >= last.lag;
        if self.samples.len() >= 2 && first.offset == last.offset && lag_never_shrinks {
            return Status::Stalled;
        }
        if self.samples.len() >= WARNING_MIN_COMMITS && lag_never_shrinks {
            return Status::Warning;
        }
        Status::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(samples: &[(i64, u64, u64)]) -> CommitWindow {
        let mut w = CommitWindow::default();
        for &(time_ms, offset, lag) in samples {
            w.push(Sample {
                time_ms,
                offset,
                lag,
            });
        }
        w
    }

    #[test]
    fn caught_up_is_ok_whatever_else() {
        let w = window(&[(0, 5, 3), (1000, 5, 3)]);
        assert_eq!(w.evaluate(0, false, 1_000_000), Status::Ok);
    }

    #[test]
    fn no_members_or_commits_that_stopped_mean_stopped() {
        let w = window(&[(0, 1, 5), (1000, 6, 5), (2000, 11, 5)]);
        assert_eq!(w.evaluate(5, false, 2100), Status::Stopped);
        // The window spans 2 s; 2.5 s of silence since the last commit.
        assert_eq!(w.evaluate(5, true, 4500), Status::Stopped);
        // Still committing: not stopped, but a lag that never shrinks is a warning.
        assert_eq!(w.evaluate(5, true, 3000), Status::Warning);
    }

    #[test]
    fn committing_the_same_offset_while_lag_grows_is_stalled() {
        let w = window(&[(0, 7, 10), (1000, 7, 12), (2000, 7, 15)]);
        assert_eq!(w.evaluate(16, true, 2100), Status::Stalled);
    }

    #[test]
    fn offsets_going_back_is_rewinding() {
        let w = window(&[(0, 100, 5), (1000, 40, 70), (2000, 45, 70)]);
        assert_eq!(w.evaluate(70, true, 2100), Status::Rewinding);
    }

    #[test]
    fn progress_with_lag_that_never_shrinks_is_warning() {
        let w = window(&[(0, 10, 5), (1000, 20, 8), (2000, 30, 12)]);
        assert_eq!(w.evaluate(12, true, 2100), Status::Warning);
        // Lag shrinking at any step: healthy.
        let w = window(&[(0, 10, 5), (1000, 20, 3), (2000, 30, 4)]);
        assert_eq!(w.evaluate(4, true, 2100), Status::Ok);
    }

    #[test]
    fn the_window_keeps_the_last_ten_commits() {
        let mut w = CommitWindow::default();
        for i in 0..25 {
            w.push(Sample {
                time_ms: i,
                offset: i as u64,
                lag: 1,
            });
        }
        assert_eq!(w.len(), STATUS_WINDOW_COMMITS);
        assert_eq!(w.samples.front().unwrap().offset, 15);
    }
}
