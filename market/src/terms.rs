//! What a deal costs and how long it runs.

/// Bytes per GiB: prices are per started GiB.
pub const GIB: u64 = 1 << 30;
/// Blocks per day at the chain's 6-second target: a deal asked for in days runs this many
/// blocks per day (a devnet with short blocks asks for blocks directly).
pub const BLOCKS_PER_DAY: u64 = 14_400;

/// Why terms cannot be made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TermsError {
    /// Nothing to store, or no time to store it for.
    Empty,
    /// The fee does not fit in a u64.
    Overflow,
}

impl std::fmt::Display for TermsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TermsError::Empty => write!(f, "a deal needs bytes and a positive duration"),
            TermsError::Overflow => write!(f, "the fee overflows"),
        }
    }
}

impl std::error::Error for TermsError {}

/// The terms of one deal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Terms {
    /// MASPC escrowed for the host, paid out one part per proven period.
    pub storage_fee: u64,
    /// Blocks of storage from the completion on.
    pub period_blocks: u64,
    /// Proof periods: ceil(period_blocks / proof_period_blocks).
    pub parts: u64,
}

/// The terms for storing `bytes` for `days` at `price_per_gib_day` (per started GiB), on a
/// chain with `proof_period_blocks`; `period_blocks` overrides the days' length in blocks
/// (a devnet). The fee is at least one MASPC per period (the ledger's minimum), so every
/// period pays something.
pub fn terms(
    price_per_gib_day: u64,
    bytes: u64,
    days: u64,
    period_blocks: Option<u64>,
    proof_period_blocks: u64,
) -> Result<Terms, TermsError> {
    if bytes == 0 || days == 0 || period_blocks == Some(0) || proof_period_blocks == 0 {
        return Err(TermsError::Empty);
    }
    let period_blocks = match period_blocks {
        Some(b) => b,
        None => days
            .checked_mul(BLOCKS_PER_DAY)
            .ok_or(TermsError::Overflow)?,
    };
    let parts = period_blocks.div_ceil(proof_period_blocks);
    let fee = price_per_gib_day
        .checked_mul(bytes.div_ceil(GIB))
        .and_then(|f| f.checked_mul(days))
        .ok_or(TermsError::Overflow)?;
    Ok(Terms {
        storage_fee: fee.max(parts),
        period_blocks,
        parts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fee_is_price_times_started_gib_times_days_and_at_least_one_per_period() {
        // (price, bytes, days, period override, proof period) -> (fee, period, parts)
        let table = [
            (
                (10, GIB, 30, None, 100),
                Ok((4320, 30 * BLOCKS_PER_DAY, 4320)),
            ),
            (
                (1000, GIB, 30, None, 100),
                Ok((30_000, 30 * BLOCKS_PER_DAY, 4320)),
            ),
            ((10, GIB + 1, 1, None, 100), Ok((144, BLOCKS_PER_DAY, 144))),
            ((10, 5 << 20, 2, Some(80), 20), Ok((20, 80, 4))),
            ((0, 5 << 20, 2, Some(80), 20), Ok((4, 80, 4))),
            ((1, 1, 1, Some(1), 100), Ok((1, 1, 1))),
            ((10, 0, 1, None, 100), Err(TermsError::Empty)),
            ((10, 1, 0, None, 100), Err(TermsError::Empty)),
            ((10, 1, 1, Some(0), 100), Err(TermsError::Empty)),
            ((u64::MAX, 2 * GIB, 1, None, 100), Err(TermsError::Overflow)),
            ((1, 1, u64::MAX, None, 100), Err(TermsError::Overflow)),
        ];
        for ((price, bytes, days, over, proof), want) in table {
            let got = terms(price, bytes, days, over, proof)
                .map(|t| (t.storage_fee, t.period_blocks, t.parts));
            assert_eq!(
                got, want,
                "price {price} bytes {bytes} days {days} {over:?}"
            );
        }
    }
}
