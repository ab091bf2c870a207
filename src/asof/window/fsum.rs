//! Exact float sums: the sum of a window's values is computed exactly and rounded once, so it
//! does not depend on the order the values are added in (and so not on partitions, batch sizes
//! or ties). Shewchuk's algorithm: the running sum is kept as a list of non-overlapping partial
//! sums, each addition exact (two-sum); the result is their sum rounded half to even.

/// Beyond this magnitude a partial sum could overflow: 2^1021 (times 1 - 2^-53).
pub(super) const BIG: f64 = f64::MAX / 8.0;

/// Accumulates floats exactly. NaN and infinities follow IEEE addition: any NaN, or both
/// infinities, give NaN; one infinity gives it. A sum whose exact value overflows `f64` is
/// ±infinity.
#[derive(Debug, Default, Clone)]
pub struct ExactSum {
    partials: Vec<f64>,
    special: f64,
    has_special: bool,
    /// Set once a value or partial sum is so large that a sum could overflow; the finite
    /// values are then added naively in sorted order (still independent of the input order).
    overflowed: Vec<f64>,
    overflow: bool,
}

impl ExactSum {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn clear(&mut self) {
        self.partials.clear();
        self.special = 0.0;
        self.has_special = false;
        self.overflowed.clear();
        self.overflow = false;
    }

    pub fn add(&mut self, x: f64) {
        if !x.is_finite() {
            self.special = if self.has_special {
                self.special + x
            } else {
                x
            };
            self.has_special = true;
            return;
        }
        // Partial sums stay below 3 * 2^1021 while every value and partial is below 2^1021, so
        // no step can overflow; beyond that, keep every value and sum them sorted at the end.
        if self.overflow || x.abs() >= BIG || self.partials.last().is_some_and(|p| p.abs() >= BIG) {
            if !self.overflow {
                self.overflow = true;
                self.overflowed.append(&mut self.partials);
            }
            self.overflowed.push(x);
            return;
        }
        let mut x = x;
        let mut kept = 0;
        for j in 0..self.partials.len() {
            let (hi, lo) = two_sum(x, self.partials[j]);
            if lo != 0.0 {
                self.partials[kept] = lo;
                kept += 1;
            }
            x = hi;
        }
        self.partials.truncate(kept);
        self.partials.push(x);
    }

    /// A sum whose partial sums are `partials` (non-overlapping, by increasing magnitude, as
    /// [`ExactSum::add`] leaves them).
    pub(super) fn from_partials(partials: &[f64]) -> Self {
        Self {
            partials: partials.to_vec(),
            ..Self::default()
        }
    }

    /// The correctly rounded sum (0.0 for no values).
    pub fn value(&self) -> f64 {
        if self.has_special {
            return self.special;
        }
        if self.overflow {
            let mut values = self.overflowed.clone();
            values.extend_from_slice(&self.partials);
            values.sort_by(f64::total_cmp);
            return values.iter().sum();
        }
        round_partials(&self.partials)
    }
}

/// One step of Shewchuk's addition: `x + y` rounded and its rounding error, exactly
/// (`hi + lo == x + y`).
#[inline]
pub(super) fn two_sum(x: f64, y: f64) -> (f64, f64) {
    let (x, y) = if x.abs() < y.abs() { (y, x) } else { (x, y) };
    let hi = x + y;
    (hi, y - (hi - x))
}

/// The correctly rounded sum of Shewchuk partial sums (non-overlapping, by increasing
/// magnitude); 0.0 for none.
pub(super) fn round_partials(p: &[f64]) -> f64 {
    let Some(mut n) = p.len().checked_sub(1) else {
        return 0.0;
    };
    let mut hi = p[n];
    let mut lo = 0.0;
    while n > 0 {
        let x = hi;
        n -= 1;
        let y = p[n];
        hi = x + y;
        let yr = hi - x;
        lo = y - yr;
        if lo != 0.0 {
            break;
        }
    }
    // Round half to even: if the rest has the same sign as `lo`, `hi` may need to move.
    if n > 0 && ((lo < 0.0 && p[n - 1] < 0.0) || (lo > 0.0 && p[n - 1] > 0.0)) {
        let y = lo * 2.0;
        let x = hi + y;
        let yr = x - hi;
        if y == yr {
            hi = x;
        }
    }
    hi
}

/// The exact, correctly rounded sum of `values`, in any order.
pub fn exact_sum(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut sum = ExactSum::new();
    for v in values {
        sum.add(v);
    }
    sum.value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_exactly_in_any_order() {
        // Python: math.fsum([0.1] * 10) == 1.0; sum(...) == 0.9999999999999999.
        assert_eq!(exact_sum([0.1; 10]), 1.0);
        assert_eq!(exact_sum([1e100, 1.0, -1e100, 1e-100]), 1.0);
        let values = [1e16, 1.0, 1.0, -1e16, 3.5, -0.25, 1e-20];
        let forward = exact_sum(values);
        let mut reversed = values;
        reversed.reverse();
        assert_eq!(forward.to_bits(), exact_sum(reversed).to_bits());
        // 2 + 3.5 - 0.25 + 1e-20, rounded once.
        assert_eq!(forward, 5.25);
        // Half-way cases round to even: 1 + 2^-53 is exactly between 1 and 1 + 2^-52.
        assert_eq!(exact_sum([1.0, 2f64.powi(-53)]), 1.0);
        assert_eq!(
            exact_sum([1.0, 2f64.powi(-53), 2f64.powi(-80)]),
            1.0 + 2f64.powi(-52)
        );
        assert_eq!(exact_sum([]), 0.0);
    }

    #[test]
    fn infinities_nan_and_overflow() {
        assert!(exact_sum([1.0, f64::NAN]).is_nan());
        assert!(exact_sum([f64::INFINITY, f64::NEG_INFINITY]).is_nan());
        assert_eq!(exact_sum([f64::INFINITY, 1.0]), f64::INFINITY);
        assert_eq!(exact_sum([f64::MAX, f64::MAX]), f64::INFINITY);
        let a = exact_sum([f64::MAX, f64::MAX, -f64::MAX, 1.0]);
        let b = exact_sum([1.0, -f64::MAX, f64::MAX, f64::MAX]);
        assert_eq!(a.to_bits(), b.to_bits());
    }
}
