//! Just enough of a BTF reader to recover struct layouts from a BPF object,
//! so the ABI test compares Rust with what clang actually laid out.

use object::{Object, ObjectSection};

#[derive(Debug, PartialEq, Eq)]
pub struct Layout {
    pub size: usize,
    /// (member name, byte offset), in declaration order.
    pub fields: Vec<(String, usize)>,
}

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;

pub fn struct_layout(elf: &[u8], name: &str) -> Result<Layout, String> {
    let file = object::File::parse(elf).map_err(|e| format!("not an ELF object: {e}"))?;
    let section = file
        .section_by_name(".BTF")
        .ok_or("object has no .BTF section")?;
    let btf = section.data().map_err(|e| e.to_string())?;
    let u16_at = |at: usize| {
        btf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        btf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };

    if u16_at(0) != Some(BTF_MAGIC) {
        return Err("bad BTF magic".into());
    }
    let word = |at: usize| u32_at(at).map(|v| v as usize).ok_or("truncated BTF header");
    let hdr_len = word(4)?;
    let (type_off, type_len) = (hdr_len + word(8)?, word(12)?);
    let str_off = hdr_len + word(16)?;
    let string = |off: u32| -> String {
        let start = str_off + off as usize;
        let bytes = btf.get(start..).unwrap_or_default();
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        String::from_utf8_lossy(&bytes[..end]).into_owned()
    };

    let mut at = type_off;
    while at < type_off + type_len {
        let name_off = u32_at(at).ok_or("truncated type")?;
        let info = u32_at(at + 4).ok_or("truncated type")?;
        let size = u32_at(at + 8).ok_or("truncated type")? as usize;
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let bitfields = info >> 31 == 1;
        at += 12;
        if kind == KIND_STRUCT && string(name_off) == name {
            let mut fields = Vec::with_capacity(vlen);
            for i in 0..vlen {
                let member = at + i * 12;
                let member_name = string(u32_at(member).ok_or("truncated member")?);
                let raw = u32_at(member + 8).ok_or("truncated member")?;
                let bits = if bitfields { raw & 0x00ff_ffff } else { raw };
                fields.push((member_name, bits as usize / 8));
            }
            return Ok(Layout { size, fields });
        }
        at += extra_bytes(kind, vlen)?;
    }
    Err(format!("struct {name} is not in the object's BTF"))
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
