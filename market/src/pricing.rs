//! A host's pricing policy (`host.toml`: `price_per_gib_day`, `price_floor`,
//! `price_surge_percent`): the price it asks on exchanges and writes into its offers, in
//! MASPC per GiB per day. The base price rises with how full the host is, by up to
//! `surge_percent` when full, and never falls below the floor: a host running out of room
//! asks more, so senders spread over hosts with room.

/// The policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pricing {
    pub base: u64,
    pub floor: u64,
    /// How much dearer a full host is than an empty one, in percent of `base`.
    pub surge_percent: u64,
}

impl Pricing {
    /// One price whatever the fill.
    pub fn flat(base: u64) -> Pricing {
        Pricing {
            base,
            floor: 0,
            surge_percent: 0,
        }
    }

    /// The price with `used` of `capacity` bytes taken (`capacity` 0 or `u64::MAX`: no
    /// limit set, so never full): `base × (1 + surge_percent/100 × used/capacity)`, rounded
    /// down, at least `floor`.
    pub fn price(&self, used: u64, capacity: u64) -> u64 {
        let raised = if capacity == 0 || capacity == u64::MAX {
            u128::from(self.base)
        } else {
            let used = u128::from(used.min(capacity));
            let base = u128::from(self.base);
            base + base * u128::from(self.surge_percent) * used / (100 * u128::from(capacity))
        };
        u64::try_from(raised).unwrap_or(u64::MAX).max(self.floor)
    }

    /// The least this policy ever asks (an empty host's price).
    pub fn lowest(&self) -> u64 {
        self.base.max(self.floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_price_rises_with_fill_and_keeps_its_floor() {
        let p = Pricing {
            base: 10,
            floor: 12,
            surge_percent: 100,
        };
        let cases = [
            // (used, capacity, price)
            (0, 1000, 12), // 10 at empty, held up by the floor
            (300, 1000, 13),
            (500, 1000, 15),
            (1000, 1000, 20),
            (5000, 1000, 20), // over capacity counts as full
            (500, 0, 12),     // no capacity set: never full
            (500, u64::MAX, 12),
        ];
        for (used, capacity, want) in cases {
            assert_eq!(p.price(used, capacity), want, "{used} of {capacity}");
        }
        assert_eq!(p.lowest(), 12);
        let flat = Pricing::flat(7);
        assert_eq!((flat.price(999, 1000), flat.lowest()), (7, 7));
        let huge = Pricing {
            base: u64::MAX,
            floor: 0,
            surge_percent: 1000,
        };
        assert_eq!(huge.price(1, 1), u64::MAX);
    }
}
