//! Storage tier kinds, fastest first.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum TierKind {
    Mem,
    Ssd,
    Hdd,
}

impl TierKind {
    pub fn parse(s: &str) -> Option<TierKind> {
        match s.to_ascii_uppercase().as_str() {
            "MEM" | "MEMORY" => Some(TierKind::Mem),
            "SSD" | "NVME" => Some(TierKind::Ssd),
            "HDD" | "DISK" => Some(TierKind::Hdd),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TierKind::Mem => "MEM",
            TierKind::Ssd => "SSD",
            TierKind::Hdd => "HDD",
        }
    }
}

impl fmt::Display for TierKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
