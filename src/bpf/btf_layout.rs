//! Just enough of a BTF reader to recover struct layouts and enum values from
//! a BPF object, so the ABI test compares Rust with what clang actually laid
//! out and computed.

use object::{Object, ObjectSection};

#[derive(Debug, PartialEq, Eq)]
pub struct Layout {
    pub size: usize,
    /// (member name, byte offset), in declaration order.
    pub fields: Vec<(String, usize)>,
}

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_ENUM: u32 = 6;
const KIND_ENUM64: u32 = 19;

pub fn struct_layout(elf: &[u8], name: &str) -> Result<Layout, String> {
    let btf = Btf::parse(elf)?;
    let ty = btf.find(KIND_STRUCT, name)?;
    let mut fields = Vec::with_capacity(ty.vlen);
    for i in 0..ty.vlen {
        let member = ty.members + i * 12;
        let member_name = btf.string(btf.u32_at(member)?);
        let raw = btf.u32_at(member + 8)?;
        let bits = if ty.kind_flag { raw & 0x00ff_ffff } else { raw };
        fields.push((member_name, bits as usize / 8));
    }
    Ok(Layout {
        size: ty.size,
        fields,
    })
}

/// (enumerator name, value), in declaration order, of an ENUM or ENUM64.
pub fn enum_values(elf: &[u8], name: &str) -> Result<Vec<(String, i128)>, String> {
    let btf = Btf::parse(elf)?;
    let (ty, wide) = match btf.find(KIND_ENUM, name) {
        Ok(ty) => (ty, false),
        Err(_) => (btf.find(KIND_ENUM64, name)?, true),
    };
    // kind_flag is set on a signed enum.
    let signed = ty.kind_flag;
    let mut values = Vec::with_capacity(ty.vlen);
    for i in 0..ty.vlen {
        let at = ty.members + i * if wide { 12 } else { 8 };
        let lo = btf.u32_at(at + 4)?;
        let value = if wide {
            let raw = u64::from(btf.u32_at(at + 8)?) << 32 | u64::from(lo);
            if signed {
                i128::from(raw as i64)
            } else {
                i128::from(raw)
            }
        } else if signed {
            i128::from(lo as i32)
        } else {
            i128::from(lo)
        };
        values.push((btf.string(btf.u32_at(at)?), value));
    }
    Ok(values)
}

struct Btf<'a> {
    data: &'a [u8],
    type_off: usize,
    type_len: usize,
    str_off: usize,
}

/// One type: its common header, and where its members start.
struct Type {
    kind_flag: bool,
    vlen: usize,
    size: usize,
    members: usize,
}

impl<'a> Btf<'a> {
    fn parse(elf: &'a [u8]) -> Result<Self, String> {
        if elf.is_empty() {
            return Err(
                "the BPF object is an empty stub (built with CIWATCH_BPF_STUBS=1); \
                 build without it, with clang, to run this test"
                    .into(),
            );
        }
        let file = object::File::parse(elf).map_err(|e| format!("not an ELF object: {e}"))?;
        let section = file
            .section_by_name(".BTF")
            .ok_or("object has no .BTF section")?;
        let data = section.data().map_err(|e| e.to_string())?;
        if data.get(0..2) != Some(&BTF_MAGIC.to_le_bytes()[..]) {
            return Err("bad BTF magic".into());
        }
        let word = |at: usize| u32_at(data, at).map(|v| v as usize);
        let hdr_len = word(4)?;
        Ok(Self {
            data,
            type_off: hdr_len + word(8)?,
            type_len: word(12)?,
            str_off: hdr_len + word(16)?,
        })
    }

    fn u32_at(&self, at: usize) -> Result<u32, String> {
        u32_at(self.data, at)
    }

    fn string(&self, off: u32) -> String {
        let start = self.str_off + off as usize;
        let bytes = self.data.get(start..).unwrap_or_default();
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        String::from_utf8_lossy(&bytes[..end]).into_owned()
    }

    /// The first type of `kind` called `name`.
    fn find(&self, kind: u32, name: &str) -> Result<Type, String> {
        let mut at = self.type_off;
        while at < self.type_off + self.type_len {
            let name_off = self.u32_at(at)?;
            let info = self.u32_at(at + 4)?;
            let this_kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            at += 12;
            if this_kind == kind && self.string(name_off) == name {
                return Ok(Type {
                    kind_flag: info >> 31 == 1,
                    vlen,
                    size: self.u32_at(at - 4)? as usize,
                    members: at,
                });
            }
            at += extra_bytes(this_kind, vlen)?;
        }
        Err(format!(
            "{name} (BTF kind {kind}) is not in the object's BTF"
        ))
    }
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, String> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| format!("BTF truncated at byte {at}"))
}

/// Bytes that follow the common 12-byte `struct btf_type` for each kind.
fn extra_bytes(kind: u32, vlen: usize) -> Result<usize, String> {
    Ok(match kind {
        1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
        3 => 12,                      // ARRAY
        4 | 5 | 15 | 19 => vlen * 12, // STRUCT, UNION, DATASEC, ENUM64
        6 | 13 => vlen * 8,           // ENUM, FUNC_PROTO
        2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
        other => return Err(format!("unknown BTF kind {other}")),
    })
}
