//! The workload file as written: serde derive with `deny_unknown_fields`,
//! every value spanned so later checks can name its line and text. Keys
//! are optional here; [`super::build`] says which are required, naming the
//! missing key.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::parse_size;

/// A number: an integer, or a string such as `"0x1000"`, `"4096"` or
/// `"2MiB"` ([`parse_size`]). Never negative, never above `u64::MAX`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Num(pub(super) u64);

struct NumVisitor;

impl Visitor<'_> for NumVisitor {
    type Value = Num;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer or a string such as \"0x1000\" or \"2MiB\"")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Num, E> {
        Ok(Num(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Num, E> {
        u64::try_from(v)
            .map(Num)
            .map_err(|_| E::custom("must not be negative"))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Num, E> {
        if v < 0 {
            return Err(E::custom("must not be negative"));
        }
        u64::try_from(v)
            .map(Num)
            .map_err(|_| E::custom("does not fit in 64 bits"))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Num, E> {
        u64::try_from(v)
            .map(Num)
            .map_err(|_| E::custom("does not fit in 64 bits"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Num, E> {
        parse_size(v).map(Num).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Num, D::Error> {
        d.deserialize_any(NumVisitor)
    }
}

/// The whole file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWorkload {
    pub(super) vm: Option<Spanned<RawVm>>,
    pub(super) policy: Option<Spanned<RawPolicy>>,
    #[serde(default)]
    pub(super) slot: Vec<Spanned<RawSlot>>,
    #[serde(default)]
    pub(super) poison: Vec<Spanned<RawPoison>>,
    #[serde(default)]
    pub(super) vcpu: Vec<Spanned<RawVcpu>>,
}

/// `vm.type`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize)]
#[serde(
    rename_all = "kebab-case",
    expecting = "\"default\", \"sw-protected\" or \"coco\""
)]
pub(super) enum VmTypeName {
    Default,
    SwProtected,
    Coco,
}

/// `vm.initial`, an op's `access` and a map's `to`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize)]
#[serde(rename_all = "lowercase", expecting = "\"private\" or \"shared\"")]
pub(super) enum Side {
    Private,
    Shared,
}

/// `[vm]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVm {
    #[serde(rename = "type")]
    pub(super) ty: Option<Spanned<VmTypeName>>,
    pub(super) memory: Option<Spanned<Num>>,
    pub(super) vcpus: Option<Spanned<Num>>,
    pub(super) initial: Option<Spanned<Side>>,
}

/// `policy.implicit`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize)]
#[serde(rename_all = "lowercase", expecting = "\"convert\" or \"deny\"")]
pub(super) enum ImplicitName {
    Convert,
    Deny,
}

/// `[policy]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) implicit: Option<Spanned<ImplicitName>>,
    pub(super) discard: Option<Spanned<bool>>,
    pub(super) max_repeats: Option<Spanned<Num>>,
}

/// `[[slot]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSlot {
    pub(super) gpa: Option<Spanned<Num>>,
    pub(super) size: Option<Spanned<Num>>,
    pub(super) guest_memfd: Option<Spanned<bool>>,
    pub(super) close_guest_memfd: Option<Spanned<bool>>,
}

/// `[[poison]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPoison {
    pub(super) gpa: Option<Spanned<Num>>,
}

/// `[[vcpu]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVcpu {
    #[serde(default)]
    pub(super) ops: Vec<Spanned<RawOp>>,
}

/// An op's `op`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize)]
#[serde(
    rename_all = "lowercase",
    expecting = "write, read, map, sync, halt or spin"
)]
pub(super) enum OpKind {
    Write,
    Read,
    Map,
    Sync,
    Halt,
    Spin,
}

impl OpKind {
    /// The keys this op takes besides `op`.
    pub(super) const fn keys(self) -> &'static [&'static str] {
        match self {
            OpKind::Write => &["gpa", "len", "byte", "access"],
            OpKind::Read => &["gpa", "len", "expect", "access"],
            OpKind::Map => &["gpa", "pages", "to", "expect_ret", "page_size"],
            OpKind::Sync => &["tag"],
            OpKind::Halt | OpKind::Spin => &[],
        }
    }
}

/// One op: every key any op takes (serde refuses any other); which keys
/// fit which op is checked in [`super::build`] against [`OpKind::keys`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOp {
    pub(super) op: Option<Spanned<OpKind>>,
    pub(super) gpa: Option<Spanned<Num>>,
    pub(super) len: Option<Spanned<Num>>,
    pub(super) byte: Option<Spanned<Num>>,
    pub(super) expect: Option<Spanned<Num>>,
    pub(super) access: Option<Spanned<Side>>,
    pub(super) pages: Option<Spanned<Num>>,
    pub(super) to: Option<Spanned<Side>>,
    pub(super) expect_ret: Option<Spanned<i64>>,
    pub(super) page_size: Option<Spanned<Num>>,
    pub(super) tag: Option<Spanned<Num>>,
}

impl RawOp {
    /// The keys present, with their spans, in declaration order.
    pub(super) fn present(&self) -> Vec<(&'static str, std::ops::Range<usize>)> {
        fn at<T>(
            name: &'static str,
            v: &Option<Spanned<T>>,
        ) -> Option<(&'static str, std::ops::Range<usize>)> {
            v.as_ref().map(|v| (name, v.span()))
        }
        [
            at("gpa", &self.gpa),
            at("len", &self.len),
            at("byte", &self.byte),
            at("expect", &self.expect),
            at("access", &self.access),
            at("pages", &self.pages),
            at("to", &self.to),
            at("expect_ret", &self.expect_ret),
            at("page_size", &self.page_size),
            at("tag", &self.tag),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}
