//! Typed views of the wire numbers in [`crate::consts`].

use crate::consts::*;
use std::fmt;
use std::ops::{BitOr, BitOrAssign};

/// Defines a transparent bit-set newtype over an unsigned integer.
///
/// A tiny local macro instead of the `bitflags` crate: we need only a handful
/// of operations and unknown bits must be preserved verbatim (the wire may
/// carry bits we do not know, and the validator has to see them).
macro_rules! flag_set {
    (
        $(#[$meta:meta])*
        $name:ident($int:ty) { $( $(#[$fmeta:meta])* $flag:ident = $value:expr, )* }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name($int);

        impl $name {
            $( $(#[$fmeta])* pub const $flag: Self = Self($value); )*

            /// Every bit with a name in this type.
            pub const KNOWN: Self = Self(0 $( | $value )*);

            /// No bit set.
            pub const fn empty() -> Self {
                Self(0)
            }

            /// Wraps raw bits, keeping unknown ones.
            pub const fn from_bits(bits: $int) -> Self {
                Self(bits)
            }

            /// The raw bits, exactly as they go on the wire.
            pub const fn bits(self) -> $int {
                self.0
            }

            /// True if every bit of `other` is set in `self`.
            pub const fn contains(self, other: Self) -> bool {
                self.0 & other.0 == other.0
            }

            /// True if any bit of `other` is set in `self`.
            pub const fn intersects(self, other: Self) -> bool {
                self.0 & other.0 != 0
            }

            /// `self` with the bits of `other` set.
            #[must_use]
            pub const fn with(self, other: Self) -> Self {
                Self(self.0 | other.0)
            }

            /// `self` with the bits of `other` cleared.
            #[must_use]
            pub const fn without(self, other: Self) -> Self {
                Self(self.0 & !other.0)
            }

            /// The bits not named in this type.
            pub const fn unknown(self) -> $int {
                self.0 & !Self::KNOWN.0
            }
        }

        impl BitOr for $name {
            type Output = Self;
            fn bitor(self, rhs: Self) -> Self {
                Self(self.0 | rhs.0)
            }
        }

        impl BitOrAssign for $name {
            fn bitor_assign(&mut self, rhs: Self) {
                self.0 |= rhs.0;
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "("))?;
                let mut first = true;
                $(
                    if self.contains(Self::$flag) {
                        if !first { f.write_str(" | ")?; }
                        f.write_str(stringify!($flag))?;
                        first = false;
                    }
                )*
                let unknown = self.unknown();
                if unknown != 0 {
                    if !first { f.write_str(" | ")?; }
                    write!(f, "{unknown:#x}")?;
                }
                f.write_str(")")
            }
        }
    };
}

flag_set! {
    /// The 16-bit transmission flags an export is advertised with.
    TransmissionFlags(u16) {
        /// MUST always be set (the encoders force it).
        HAS_FLAGS = FLAG_HAS_FLAGS,
        /// The export is read-only.
        READ_ONLY = FLAG_READ_ONLY,
        /// `NBD_CMD_FLUSH` supported.
        SEND_FLUSH = FLAG_SEND_FLUSH,
        /// `NBD_CMD_FLAG_FUA` supported.
        SEND_FUA = FLAG_SEND_FUA,
        /// Rotational medium hint.
        ROTATIONAL = FLAG_ROTATIONAL,
        /// `NBD_CMD_TRIM` supported.
        SEND_TRIM = FLAG_SEND_TRIM,
        /// `NBD_CMD_WRITE_ZEROES` supported.
        SEND_WRITE_ZEROES = FLAG_SEND_WRITE_ZEROES,
        /// `NBD_CMD_FLAG_DF` supported.
        SEND_DF = FLAG_SEND_DF,
        /// Safe to use several connections.
        CAN_MULTI_CONN = FLAG_CAN_MULTI_CONN,
        /// `NBD_CMD_RESIZE` (experimental).
        SEND_RESIZE = FLAG_SEND_RESIZE,
        /// `NBD_CMD_CACHE` understood.
        SEND_CACHE = FLAG_SEND_CACHE,
        /// `NBD_CMD_FLAG_FAST_ZERO` supported.
        SEND_FAST_ZERO = FLAG_SEND_FAST_ZERO,
    }
}

flag_set! {
    /// The 16-bit command flags of a transmission request.
    CommandFlags(u16) {
        /// Force unit access.
        FUA = CMD_FLAG_FUA,
        /// Write zeroes without punching a hole.
        NO_HOLE = CMD_FLAG_NO_HOLE,
        /// Don't fragment the read reply.
        DF = CMD_FLAG_DF,
        /// One block status extent only.
        REQ_ONE = CMD_FLAG_REQ_ONE,
        /// Fail write zeroes fast if not fast.
        FAST_ZERO = CMD_FLAG_FAST_ZERO,
    }
}

/// Transmission-phase command (the request "type" field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// `NBD_CMD_READ`.
    Read,
    /// `NBD_CMD_WRITE`; *length* bytes of payload follow the header.
    Write,
    /// `NBD_CMD_DISC`: soft disconnect, never answered.
    Disconnect,
    /// `NBD_CMD_FLUSH`.
    Flush,
    /// `NBD_CMD_TRIM`.
    Trim,
    /// `NBD_CMD_CACHE`.
    Cache,
    /// `NBD_CMD_WRITE_ZEROES`.
    WriteZeroes,
    /// `NBD_CMD_BLOCK_STATUS`.
    BlockStatus,
    /// `NBD_CMD_RESIZE` (experimental extension, never advertised here).
    Resize,
    /// Any other value; the server answers `NBD_EINVAL` and carries on.
    Unknown(u16),
}

impl Command {
    /// Decodes the wire value; never fails.
    pub const fn from_wire(value: u16) -> Self {
        match value {
            CMD_READ => Self::Read,
            CMD_WRITE => Self::Write,
            CMD_DISC => Self::Disconnect,
            CMD_FLUSH => Self::Flush,
            CMD_TRIM => Self::Trim,
            CMD_CACHE => Self::Cache,
            CMD_WRITE_ZEROES => Self::WriteZeroes,
            CMD_BLOCK_STATUS => Self::BlockStatus,
            CMD_RESIZE => Self::Resize,
            other => Self::Unknown(other),
        }
    }

    /// The wire value.
    pub const fn to_wire(self) -> u16 {
        match self {
            Self::Read => CMD_READ,
            Self::Write => CMD_WRITE,
            Self::Disconnect => CMD_DISC,
            Self::Flush => CMD_FLUSH,
            Self::Trim => CMD_TRIM,
            Self::Cache => CMD_CACHE,
            Self::WriteZeroes => CMD_WRITE_ZEROES,
            Self::BlockStatus => CMD_BLOCK_STATUS,
            Self::Resize => CMD_RESIZE,
            Self::Unknown(other) => other,
        }
    }

    /// True for commands that modify the export (refused on read-only
    /// exports with `NBD_EPERM`).
    pub const fn is_write(self) -> bool {
        matches!(self, Self::Write | Self::WriteZeroes | Self::Trim)
    }
}

/// The error values the spec allows in a reply.
///
/// There is deliberately no "success" variant: a reply carries either
/// nothing (success) or one of these, so `Option<Errno>` / `Result<_, Errno>`
/// can never encode a zero error in an error chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Errno {
    /// `NBD_EPERM` (1).
    Perm,
    /// `NBD_EIO` (5).
    Io,
    /// `NBD_ENOMEM` (12).
    NoMem,
    /// `NBD_EINVAL` (22).
    Inval,
    /// `NBD_ENOSPC` (28).
    NoSpc,
    /// `NBD_EOVERFLOW` (75).
    Overflow,
    /// `NBD_ENOTSUP` (95).
    NotSup,
    /// `NBD_ESHUTDOWN` (108).
    Shutdown,
}

impl Errno {
    /// The wire value.
    pub const fn to_wire(self) -> u32 {
        match self {
            Self::Perm => EPERM,
            Self::Io => EIO,
            Self::NoMem => ENOMEM,
            Self::Inval => EINVAL,
            Self::NoSpc => ENOSPC,
            Self::Overflow => EOVERFLOW,
            Self::NotSup => ENOTSUP,
            Self::Shutdown => ESHUTDOWN,
        }
    }

    /// Decodes a wire value; `None` for 0 (success) and for values the spec
    /// does not define.
    pub const fn from_wire(value: u32) -> Option<Self> {
        Some(match value {
            EPERM => Self::Perm,
            EIO => Self::Io,
            ENOMEM => Self::NoMem,
            EINVAL => Self::Inval,
            ENOSPC => Self::NoSpc,
            EOVERFLOW => Self::Overflow,
            ENOTSUP => Self::NotSup,
            ESHUTDOWN => Self::Shutdown,
            _ => return None,
        })
    }

    /// Decodes a nonzero wire value the way the spec tells clients to:
    /// an unexpected value SHOULD be treated as `NBD_EINVAL`.
    pub const fn from_wire_lenient(value: u32) -> Self {
        match Self::from_wire(value) {
            Some(e) => e,
            None => Self::Inval,
        }
    }

    /// Maps a local I/O error to the closest NBD error, following the spec's
    /// advice (quota / file-too-large become `ENOSPC`, read-only becomes
    /// `EPERM`) and defaulting to `EIO`.
    pub fn from_io_error(err: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match err.kind() {
            K::PermissionDenied | K::ReadOnlyFilesystem => Self::Perm,
            K::OutOfMemory => Self::NoMem,
            K::InvalidInput => Self::Inval,
            K::StorageFull | K::QuotaExceeded | K::FileTooLarge => Self::NoSpc,
            K::Unsupported => Self::NotSup,
            _ => Self::Io,
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::Perm => "operation not permitted",
            Self::Io => "input/output error",
            Self::NoMem => "cannot allocate memory",
            Self::Inval => "invalid argument",
            Self::NoSpc => "no space left on device",
            Self::Overflow => "value too large",
            Self::NotSup => "operation not supported",
            Self::Shutdown => "server is shutting down",
        };
        f.write_str(s)
    }
}

/// Error reply types a server may send during option haggling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OptionError {
    /// `NBD_REP_ERR_UNSUP`.
    Unsupported,
    /// `NBD_REP_ERR_POLICY`.
    Policy,
    /// `NBD_REP_ERR_INVALID`.
    Invalid,
    /// `NBD_REP_ERR_PLATFORM`.
    Platform,
    /// `NBD_REP_ERR_TLS_REQD` (never allowed by this crate's server side,
    /// which runs in NOTLS mode).
    TlsRequired,
    /// `NBD_REP_ERR_UNKNOWN`.
    UnknownExport,
    /// `NBD_REP_ERR_SHUTDOWN`.
    Shutdown,
    /// `NBD_REP_ERR_BLOCK_SIZE_REQD`.
    BlockSizeRequired,
    /// `NBD_REP_ERR_TOO_BIG`.
    TooBig,
}

impl OptionError {
    /// The wire reply type.
    pub const fn to_wire(self) -> u32 {
        match self {
            Self::Unsupported => REP_ERR_UNSUP,
            Self::Policy => REP_ERR_POLICY,
            Self::Invalid => REP_ERR_INVALID,
            Self::Platform => REP_ERR_PLATFORM,
            Self::TlsRequired => REP_ERR_TLS_REQD,
            Self::UnknownExport => REP_ERR_UNKNOWN,
            Self::Shutdown => REP_ERR_SHUTDOWN,
            Self::BlockSizeRequired => REP_ERR_BLOCK_SIZE_REQD,
            Self::TooBig => REP_ERR_TOO_BIG,
        }
    }

    /// Decodes a known error reply type.
    pub const fn from_wire(value: u32) -> Option<Self> {
        Some(match value {
            REP_ERR_UNSUP => Self::Unsupported,
            REP_ERR_POLICY => Self::Policy,
            REP_ERR_INVALID => Self::Invalid,
            REP_ERR_PLATFORM => Self::Platform,
            REP_ERR_TLS_REQD => Self::TlsRequired,
            REP_ERR_UNKNOWN => Self::UnknownExport,
            REP_ERR_SHUTDOWN => Self::Shutdown,
            REP_ERR_BLOCK_SIZE_REQD => Self::BlockSizeRequired,
            REP_ERR_TOO_BIG => Self::TooBig,
            _ => return None,
        })
    }
}

/// A selected metadata context: the id the server chose and its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MetaContext {
    /// Server-chosen, connection-local id used in block status chunks.
    pub id: u32,
    /// Full name, e.g. `base:allocation`.
    pub name: String,
}

/// Block size constraints (`NBD_INFO_BLOCK_SIZE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockSize {
    /// Minimum block size: power of two, at most 64 KiB.
    pub minimum: u32,
    /// Preferred block size: power of two, at least max(minimum, 512).
    pub preferred: u32,
    /// Maximum payload: at least `preferred`.
    pub maximum: u32,
}

impl BlockSize {
    /// The spec's defaults when nothing was advertised: 1 / 4096 / 32 MiB.
    pub const DEFAULT: Self = Self {
        minimum: 1,
        preferred: 4096,
        maximum: DEFAULT_MAX_PAYLOAD,
    };

    /// Checks the MUST constraints from "Size constraints".
    pub const fn is_valid(&self) -> bool {
        let min_ok = self.minimum.is_power_of_two() && self.minimum <= 65_536;
        let floor = if self.minimum > 512 {
            self.minimum
        } else {
            512
        };
        let pref_ok = self.preferred.is_power_of_two() && self.preferred >= floor;
        min_ok && pref_ok && self.maximum >= self.preferred
    }
}

/// One extent descriptor of a block status chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockDescriptor {
    /// Extent length in bytes (MUST be nonzero).
    pub length: u32,
    /// Context-defined status flags (for `base:allocation`:
    /// [`STATE_HOLE`], [`STATE_ZERO`]).
    pub flags: u32,
}
