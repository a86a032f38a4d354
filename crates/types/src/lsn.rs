//! WAL positions and timelines.
//!
//! PostgreSQL prints an LSN as two upper-case hex halves (`16/B374D848`);
//! Patroni stores LSNs in etcd as plain integers. `Lsn` converts between both.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A PostgreSQL timeline id.
pub type Timeline = u32;

/// A WAL position (log sequence number), stored as the byte offset Patroni uses.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Bytes by which `self` is behind `ahead`; zero when `self` is not behind.
    pub fn lag_behind(self, ahead: Lsn) -> u64 {
        ahead.0.saturating_sub(self.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// An LSN string that is not of the form `hex/hex`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hex numbers separated by '/', like 0/3000060")]
pub struct LsnParseError(pub String);

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || LsnParseError(text.to_string());
        let (high, low) = text.trim().split_once('/').ok_or_else(err)?;
        let high = u32::from_str_radix(high, 16).map_err(|_| err())?;
        let low = u32::from_str_radix(low, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(high) << 32) | u64::from(low)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formats_like_postgresql() {
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(100).to_string(), "0/64");
    }

    #[test]
    fn rejects_garbage() {
        assert!("nope".parse::<Lsn>().is_err());
        assert!("1/xyz".parse::<Lsn>().is_err());
    }

    #[test]
    fn lag_never_negative() {
        assert_eq!(Lsn(10).lag_behind(Lsn(4)), 0);
        assert_eq!(Lsn(4).lag_behind(Lsn(10)), 6);
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(raw in any::<u64>()) {
            let lsn = Lsn(raw);
            prop_assert_eq!(lsn.to_string().parse::<Lsn>().unwrap(), lsn);
        }
    }
}
