//! An insurer's decision on a quote: whether it covers a deal, and for what premium. Pure:
//! the caller reads the host's standing and the insurer's free deposit from the chain.
//!
//! The premium is `cover x rate_ppm_per_day x started days / 10^6`, scaled by the host's
//! risk: x (2000 - rating) / 1000 (a host rated 1000 pays the base rate, a host rated 0
//! twice it). Rounded up, at least one. MASPC of premium and MASP of cover are priced one
//! for one: the chain has no rate between them. Cover is never more than the host's
//! deposit still backs (its deposit less the cover already sold on its deals): the chain
//! recovers a claim from the host's deposit, so that is the insurer's bound on a host
//! that colludes with its sender.

use crate::terms::BLOCKS_PER_DAY;

/// How an insurer prices and bounds its cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InsurancePolicy {
    /// Premium per day of cover, in millionths of the cover, for a host rated 1000.
    pub rate_ppm_per_day: u64,
    /// Hosts rated lower are not covered.
    pub min_rating: u32,
    /// The most cover sold on one deal (MASP).
    pub max_cover_per_deal: u64,
}

impl Default for InsurancePolicy {
    fn default() -> Self {
        InsurancePolicy {
            rate_ppm_per_day: 100,
            min_rating: 300,
            max_cover_per_deal: 100_000,
        }
    }
}

/// The host as the chain shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostStanding {
    /// Registered as a host and not unbonding.
    pub bonded: bool,
    pub rating: u32,
    /// MASP of its host deposit not yet backing cover (deposit less exposure).
    pub free_deposit: u64,
}

/// Why a quote is refused; [`QuoteRefusal::reason`] is the machine-readable name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuoteRefusal {
    /// A cover of 0, or a deal with no blocks.
    Empty,
    CoverTooLarge {
        max: u64,
    },
    HostNotBonded,
    RatingTooLow {
        rating: u32,
        min: u32,
    },
    /// The host's deposit backs only `free` more MASP of cover.
    HostDepositTooLow {
        free: u64,
        cover: u64,
    },
    /// The insurer's deposit, less the cover it sold and quoted, leaves `free`.
    Exposure {
        free: u64,
        cover: u64,
    },
    Overflow,
}

impl QuoteRefusal {
    pub fn reason(&self) -> &'static str {
        match self {
            QuoteRefusal::Empty => "empty",
            QuoteRefusal::CoverTooLarge { .. } => "cover_too_large",
            QuoteRefusal::HostNotBonded => "host_not_bonded",
            QuoteRefusal::RatingTooLow { .. } => "rating_too_low",
            QuoteRefusal::HostDepositTooLow { .. } => "host_deposit",
            QuoteRefusal::Exposure { .. } => "exposure",
            QuoteRefusal::Overflow => "overflow",
        }
    }
}

impl std::fmt::Display for QuoteRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuoteRefusal::Empty => write!(f, "nothing to cover: the cover and the period must be positive"),
            QuoteRefusal::CoverTooLarge { max } => {
                write!(f, "this insurer covers at most {max} MASP per deal")
            }
            QuoteRefusal::HostNotBonded => {
                write!(f, "the host is not a registered, bonded host on the chain")
            }
            QuoteRefusal::RatingTooLow { rating, min } => write!(
                f,
                "the host's rating {rating} is under the {min} this insurer covers"
            ),
            QuoteRefusal::HostDepositTooLow { free, cover } => write!(
                f,
                "the host's deposit backs {free} MASP more of cover, not {cover}"
            ),
            QuoteRefusal::Exposure { free, cover } => write!(
                f,
                "this insurer can cover {free} MASP more, not {cover}: its deposit bounds its exposure"
            ),
            QuoteRefusal::Overflow => write!(f, "the premium overflows"),
        }
    }
}

impl std::error::Error for QuoteRefusal {}

/// The premium for `cover` MASP on a deal of `period_blocks` with `host`, from an insurer
/// that can still cover `free` MASP; or why not.
pub fn premium(
    policy: &InsurancePolicy,
    host: &HostStanding,
    cover: u64,
    period_blocks: u64,
    free: u64,
) -> Result<u64, QuoteRefusal> {
    if cover == 0 || period_blocks == 0 {
        return Err(QuoteRefusal::Empty);
    }
    if cover > policy.max_cover_per_deal {
        return Err(QuoteRefusal::CoverTooLarge {
            max: policy.max_cover_per_deal,
        });
    }
    if !host.bonded {
        return Err(QuoteRefusal::HostNotBonded);
    }
    if host.rating < policy.min_rating {
        return Err(QuoteRefusal::RatingTooLow {
            rating: host.rating,
            min: policy.min_rating,
        });
    }
    if cover > host.free_deposit {
        return Err(QuoteRefusal::HostDepositTooLow {
            free: host.free_deposit,
            cover,
        });
    }
    if cover > free {
        return Err(QuoteRefusal::Exposure { free, cover });
    }
    let days = u128::from(period_blocks.div_ceil(BLOCKS_PER_DAY));
    let risk = 2000 - u128::from(host.rating.min(1000));
    let scaled = u128::from(cover)
        .checked_mul(u128::from(policy.rate_ppm_per_day))
        .and_then(|v| v.checked_mul(days))
        .and_then(|v| v.checked_mul(risk))
        .ok_or(QuoteRefusal::Overflow)?;
    let p = scaled.div_ceil(1_000_000 * 1000).max(1);
    u64::try_from(p).map_err(|_| QuoteRefusal::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: HostStanding = HostStanding {
        bonded: true,
        rating: 1000,
        free_deposit: 10_000_000,
    };

    #[test]
    fn the_premium_follows_cover_days_and_the_hosts_risk() {
        let p = InsurancePolicy {
            rate_ppm_per_day: 100,
            min_rating: 300,
            max_cover_per_deal: 10_000_000,
        };
        let year = 365 * BLOCKS_PER_DAY;
        // 1,000,000 x 100 ppm x 365 days = 36,500 for the best host.
        assert_eq!(premium(&p, &HOST, 1_000_000, year, u64::MAX), Ok(36_500));
        // A started day counts whole.
        assert_eq!(
            premium(&p, &HOST, 1_000_000, year + 1, u64::MAX),
            Ok(36_600)
        );
        // Rated 500: x 1.5; rated 0: x 2.
        let mid = HostStanding {
            rating: 500,
            ..HOST
        };
        assert_eq!(premium(&p, &mid, 1_000_000, year, u64::MAX), Ok(54_750));
        let worst = HostStanding { rating: 0, ..HOST };
        let any = InsurancePolicy { min_rating: 0, ..p };
        assert_eq!(premium(&any, &worst, 1_000_000, year, u64::MAX), Ok(73_000));
        // Tiny covers still cost one.
        assert_eq!(premium(&p, &HOST, 1, 1, u64::MAX), Ok(1));
    }

    #[test]
    fn cover_beyond_the_policy_or_the_free_deposit_is_refused() {
        let p = InsurancePolicy::default();
        assert_eq!(premium(&p, &HOST, 0, 10, 100), Err(QuoteRefusal::Empty));
        assert_eq!(
            premium(&p, &HOST, 100_001, 10, u64::MAX),
            Err(QuoteRefusal::CoverTooLarge { max: 100_000 })
        );
        assert_eq!(
            premium(&p, &HOST, 5_000, 10, 4_999),
            Err(QuoteRefusal::Exposure {
                free: 4_999,
                cover: 5_000
            })
        );
        assert!(premium(&p, &HOST, 5_000, 10, 5_000).is_ok());
        let thin = HostStanding {
            free_deposit: 4_000,
            ..HOST
        };
        assert_eq!(
            premium(&p, &thin, 5_000, 10, u64::MAX),
            Err(QuoteRefusal::HostDepositTooLow {
                free: 4_000,
                cover: 5_000
            })
        );
        let unbonded = HostStanding {
            bonded: false,
            ..HOST
        };
        assert_eq!(
            premium(&p, &unbonded, 5, 10, 100),
            Err(QuoteRefusal::HostNotBonded)
        );
        let bad = HostStanding {
            rating: 299,
            ..HOST
        };
        let refused = premium(&p, &bad, 5, 10, 100).unwrap_err();
        assert_eq!(refused.reason(), "rating_too_low");
        assert!(refused.to_string().contains("299"), "{refused}");
        assert_eq!(
            premium(
                &InsurancePolicy {
                    rate_ppm_per_day: u64::MAX,
                    max_cover_per_deal: u64::MAX,
                    ..p
                },
                &HostStanding {
                    free_deposit: u64::MAX,
                    ..HOST
                },
                u64::MAX,
                u64::MAX,
                u64::MAX
            ),
            Err(QuoteRefusal::Overflow)
        );
    }
}
