//! The sender's decisions after paying for a deal and uploading its chunks.

/// Payments (deals) a sender makes for one copy before giving up on a host whose CRCs keep
/// differing from its own: the first, and two more.
pub const ATTEMPTS_MAX: u32 = 3;

/// A deal's stage as the sender sees it on the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    Awaiting,
    Active {
        start_height: u64,
    },
    /// The host's CRCs differed at these chunk indices (the escrow came back).
    Mismatched {
        chunks: Vec<u32>,
    },
    /// The host did not complete in time (the escrow came back).
    Expired,
    Ended,
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Wait for the next block and look again.
    Wait,
    /// Storage runs: the copy is placed.
    Placed { start_height: u64 },
    /// Pay a new deal with the same host and upload again (the chunks named differed).
    PayAgain { chunks: Vec<u32> },
    /// Stop with this reason; the escrow is back with the sender.
    GiveUp(String),
}

/// What to do with the deal of attempt `attempt` (from 1) in stage `seen`.
pub fn after_upload(seen: &Seen, attempt: u32) -> Next {
    match seen {
        Seen::Awaiting => Next::Wait,
        Seen::Active { start_height } => Next::Placed {
            start_height: *start_height,
        },
        Seen::Ended => Next::GiveUp("the deal already ended".into()),
        Seen::Expired => Next::GiveUp(
            "the host did not complete the deal in time; the escrow was refunded".into(),
        ),
        Seen::Mismatched { chunks } if attempt < ATTEMPTS_MAX => Next::PayAgain {
            chunks: chunks.clone(),
        },
        Seen::Mismatched { chunks } => Next::GiveUp(format!(
            "the host's CRCs differed from ours at chunks {chunks:?} in {attempt} deals; \
             every escrow was refunded: choose another host"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stage_and_attempt_leads_to_one_next_step() {
        let mism = Seen::Mismatched { chunks: vec![2, 5] };
        let table = [
            (Seen::Awaiting, 1, Next::Wait),
            (
                Seen::Active { start_height: 9 },
                1,
                Next::Placed { start_height: 9 },
            ),
            (mism.clone(), 1, Next::PayAgain { chunks: vec![2, 5] }),
            (
                mism.clone(),
                ATTEMPTS_MAX - 1,
                Next::PayAgain { chunks: vec![2, 5] },
            ),
        ];
        for (seen, attempt, want) in table {
            assert_eq!(after_upload(&seen, attempt), want, "{seen:?} {attempt}");
        }
        for seen in [mism, Seen::Expired, Seen::Ended] {
            assert!(
                matches!(after_upload(&seen, ATTEMPTS_MAX), Next::GiveUp(_)),
                "{seen:?}"
            );
        }
    }
}
