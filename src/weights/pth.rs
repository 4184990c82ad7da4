//! PyTorch checkpoints (`torch.save`, `.pth`/`.pt`), read without running any code.
//!
//! Two containers exist. Since PyTorch 1.6 a zip archive: `PREFIX/data.pkl` is the pickled
//! object, whose tensors name their storages by key, each stored raw in `PREFIX/data/KEY`,
//! in the byte order `PREFIX/byteorder` gives (little when absent). Before, and in the
//! official HRNet releases (PyTorch 1.0): pickles in a row — a magic number, the format
//! version (1001), the writer's byte order and type sizes, the object, the sorted list of
//! storage keys — then each storage in that order as an int64 element count and its bytes.
//! Either way the object is read by [`super::pickle`], which calls nothing.
//!
//! The object may be a state_dict or a training checkpoint that holds one under
//! `state_dict` (as the official `tools/train.py` saves it); its tensor entries are
//! returned, anything else in it is ignored.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{Cursor, Read};

use safetensors::Dtype;

use super::pickle::{self, Id, Pickle, TensorView, Value};

/// A tensor read from a checkpoint: contiguous, row-major, little-endian bytes, borrowed
/// from the file where it holds them so.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RawTensor<'a> {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Cow<'a, [u8]>,
}

/// The legacy format's first pickle: LONG1 of 0x1950a86a20f9469cfc6c at protocol 2.
const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";
const LEGACY_VERSION: usize = 1001;
const ZIP_MAGIC: &[u8] = b"PK\x03\x04";

/// Whether `bytes` start like a PyTorch checkpoint of either format.
pub(crate) fn is_pth(bytes: &[u8]) -> bool {
    bytes.starts_with(ZIP_MAGIC) || bytes.starts_with(LEGACY_MAGIC)
}

/// The tensors of a checkpoint's state_dict, in file order.
pub(crate) fn read(bytes: &[u8]) -> Result<Vec<(String, RawTensor<'_>)>, String> {
    let (pickle, storages) = if bytes.starts_with(ZIP_MAGIC) {
        read_zip(bytes)?
    } else if bytes.starts_with(LEGACY_MAGIC) {
        read_legacy(bytes)?
    } else {
        return Err(
            "not a PyTorch checkpoint (neither a zip archive nor the legacy format)".into(),
        );
    };
    state_dict(&pickle, &storages, bytes.len())
}

/// Storage bytes by key, and whether they are big-endian.
struct Storages<'a> {
    by_key: HashMap<String, Cow<'a, [u8]>>,
    big_endian: bool,
}

fn read_zip(bytes: &[u8]) -> Result<(Pickle, Storages<'_>), String> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| format!("not a readable zip archive ({e})"))?;
    let names = zip
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<Result<Vec<String>, _>>()
        .map_err(|e| format!("an unreadable zip entry name ({e})"))?;
    let pkl: Vec<&String> = names
        .iter()
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .collect();
    let [pkl] = pkl.as_slice() else {
        return Err(format!(
            "a zip archive with {} PREFIX/data.pkl entries, not one: not a torch.save file",
            pkl.len()
        ));
    };
    let prefix = &pkl[..pkl.len() - "data.pkl".len()];
    let data = entry(&mut zip, bytes, pkl, None)?;
    let pickle = pickle::load(&data)?;
    let order_name = format!("{prefix}byteorder");
    let big_endian = match names.contains(&order_name) {
        true => {
            let order = entry(&mut zip, bytes, &order_name, Some(16))?;
            match &*order {
                b"little" => false,
                b"big" => true,
                other => {
                    return Err(format!(
                        "byteorder entry says '{}'",
                        String::from_utf8_lossy(other)
                    ));
                }
            }
        }
        false => false,
    };
    let mut by_key = HashMap::new();
    let data_dir = format!("{prefix}data/");
    for name in &names {
        if let Some(key) = name.strip_prefix(&data_dir) {
            by_key.insert(key.to_string(), entry(&mut zip, bytes, name, None)?);
        }
    }
    Ok((pickle, Storages { by_key, big_endian }))
}

/// An archive entry's bytes: borrowed from `bytes` when stored (as torch.save writes
/// them), decompressed when deflated, never more than `limit` bytes or what the
/// compression could have produced.
fn entry<'a>(
    zip: &mut zip::ZipArchive<Cursor<&'a [u8]>>,
    bytes: &'a [u8],
    name: &str,
    limit: Option<u64>,
) -> Result<Cow<'a, [u8]>, String> {
    let mut f = zip
        .by_name(name)
        .map_err(|e| format!("zip entry {name}: {e}"))?;
    let size = f.size();
    if limit.is_some_and(|l| size > l) {
        return Err(format!("zip entry {name} holds {size} bytes"));
    }
    // Deflate expands at most 1032 times.
    if size > f.compressed_size().saturating_mul(1032) {
        return Err(format!(
            "zip entry {name} claims {size} bytes from {} compressed",
            f.compressed_size()
        ));
    }
    if f.compression() == zip::CompressionMethod::Stored {
        let range = f
            .data_start()
            .and_then(|start| {
                let start = usize::try_from(start).ok()?;
                Some(start..start.checked_add(usize::try_from(size).ok()?)?)
            })
            .filter(|r| r.end <= bytes.len())
            .ok_or_else(|| format!("zip entry {name} runs past the end of the file"))?;
        return Ok(Cow::Borrowed(&bytes[range]));
    }
    let mut out = Vec::new();
    f.by_ref()
        .take(size)
        .read_to_end(&mut out)
        .map_err(|e| format!("zip entry {name}: {e}"))?;
    if out.len() as u64 != size {
        return Err(format!("zip entry {name} is shorter than it claims"));
    }
    Ok(Cow::Owned(out))
}

fn read_legacy(bytes: &[u8]) -> Result<(Pickle, Storages<'_>), String> {
    let mut at = LEGACY_MAGIC.len();
    let mut next = |what: &str| -> Result<Pickle, String> {
        let p = pickle::load(&bytes[at..]).map_err(|e| format!("{what}: {e}"))?;
        at += p.len;
        Ok(p)
    };
    let version = next("format version")?;
    if version.usize(version.root) != Some(LEGACY_VERSION) {
        return Err(format!(
            "legacy format version {:?}, expected {LEGACY_VERSION}",
            version.get(version.root)
        ));
    }
    let info = next("system information")?;
    let big_endian = match info
        .dict_get(info.root, "little_endian")
        .map(|i| info.get(i))
    {
        Some(Value::Bool(little)) => !little,
        _ => return Err("the writer's byte order is not recorded".into()),
    };
    let pickle = next("the saved object")?;
    let keys = next("storage keys")?;
    let Value::List(key_ids) = keys.get(keys.root) else {
        return Err("the storage keys are not a list".into());
    };
    // Each storage's element count is in the object's persistent ids; its record repeats
    // it, and the element size comes from the storage type.
    let sizes = storage_sizes(&pickle)?;
    let mut by_key = HashMap::new();
    for &k in key_ids {
        let key = keys.str(k).ok_or("a storage key is not a string")?;
        let &(numel, elem) = sizes
            .get(key)
            .ok_or_else(|| format!("storage '{key}' is listed but no tensor uses it"))?;
        let head: [u8; 8] = bytes
            .get(at..at + 8)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| format!("storage '{key}': the file ends before its record"))?;
        let count = if big_endian {
            i64::from_be_bytes(head)
        } else {
            i64::from_le_bytes(head)
        };
        if usize::try_from(count).ok() != Some(numel) {
            return Err(format!(
                "storage '{key}': its record holds {count} elements, the object says {numel}"
            ));
        }
        let start = at + 8;
        let end = numel
            .checked_mul(elem)
            .and_then(|n| start.checked_add(n))
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| format!("storage '{key}': the file ends inside its data"))?;
        by_key.insert(key.to_string(), Cow::Borrowed(&bytes[start..end]));
        at = end;
    }
    Ok((pickle, Storages { by_key, big_endian }))
}

/// A persistent id `('storage', torch.XStorage, key, location, numel[, view])`, read.
struct StorageId<'p> {
    dtype: Dtype,
    elem: usize,
    key: &'p str,
    numel: usize,
}

fn storage_id(p: &Pickle, pid: Id) -> Result<StorageId<'_>, String> {
    let Value::Tuple(t) = p.get(pid) else {
        return Err("a storage's persistent id is not a tuple".into());
    };
    let [tag, kind, key, _location, numel, rest @ ..] = t.as_slice() else {
        return Err("a storage's persistent id has too few fields".into());
    };
    if p.str(*tag) != Some("storage") {
        return Err("a persistent id that is not a storage".into());
    }
    if let Some(view) = rest.first()
        && p.get(*view) != &Value::None
    {
        return Err("a storage view (PyTorch before 0.4 wrote these); re-save it".into());
    }
    let Value::Global(module, name) = p.get(*kind) else {
        return Err("a storage type that is not a name".into());
    };
    let (dtype, elem) = match (module.as_str(), name.as_str()) {
        ("torch", "FloatStorage") => (Dtype::F32, 4),
        ("torch", "HalfStorage") => (Dtype::F16, 2),
        ("torch", "BFloat16Storage") => (Dtype::BF16, 2),
        ("torch", "DoubleStorage") => (Dtype::F64, 8),
        ("torch", "LongStorage") => (Dtype::I64, 8),
        ("torch", "IntStorage") => (Dtype::I32, 4),
        ("torch", "ShortStorage") => (Dtype::I16, 2),
        ("torch", "CharStorage") => (Dtype::I8, 1),
        ("torch", "ByteStorage") => (Dtype::U8, 1),
        ("torch", "BoolStorage") => (Dtype::BOOL, 1),
        _ => return Err(format!("storage type {module}.{name} is not read")),
    };
    Ok(StorageId {
        dtype,
        elem,
        key: p.str(*key).ok_or("a storage key is not a string")?,
        numel: p.usize(*numel).ok_or("a storage size is not a count")?,
    })
}

/// Every storage the object's tensors name: key → (elements, element size).
fn storage_sizes(p: &Pickle) -> Result<HashMap<String, (usize, usize)>, String> {
    let mut sizes = HashMap::new();
    for v in &p.values {
        if let Value::Persistent(pid) = v {
            let s = storage_id(p, *pid)?;
            if let Some(&(n, e)) = sizes.get(s.key)
                && (n, e) != (s.numel, s.elem)
            {
                return Err(format!("storage '{}' is described two ways", s.key));
            }
            sizes.insert(s.key.to_string(), (s.numel, s.elem));
        }
    }
    Ok(sizes)
}

/// The state_dict's tensors. `file_len` bounds what views of shared storages may copy.
fn state_dict<'a>(
    p: &Pickle,
    storages: &Storages<'a>,
    file_len: usize,
) -> Result<Vec<(String, RawTensor<'a>)>, String> {
    let dict = p
        .dict_get(p.root, "state_dict")
        .filter(|&d| matches!(p.get(d), Value::Dict(_)))
        .unwrap_or(p.root);
    let Value::Dict(items) = p.get(dict) else {
        return Err(format!(
            "the saved object is {}, not a state_dict",
            describe(p.get(p.root))
        ));
    };
    // Views may share a storage; real state_dicts use each byte about once. This also
    // bounds the f32 copies made of them.
    let mut budget = file_len.saturating_mul(2).saturating_add(1 << 20);
    let mut out = Vec::new();
    for &(k, v) in items {
        let Some(key) = p.str(k) else { continue };
        match p.get(v) {
            Value::Tensor(t) => {
                let raw = materialise(p, t, storages, &mut budget)
                    .map_err(|e| format!("tensor '{key}': {e}"))?;
                out.push((key.to_string(), raw));
            }
            Value::Object(name) if name.starts_with("torch") => {
                return Err(format!(
                    "'{key}' is stored as {name}, not a dense tensor; save it with \
                     tensor.to_dense().float()"
                ));
            }
            _ => {}
        }
    }
    if out.is_empty() {
        return Err("the saved object holds no tensors".into());
    }
    Ok(out)
}

fn describe(v: &Value) -> String {
    match v {
        Value::Tensor(_) => "a single tensor".into(),
        Value::Object(name) => name.clone(),
        Value::List(_) => "a list".into(),
        Value::Tuple(_) => "a tuple".into(),
        other => format!("{other:?}"),
    }
}

/// Copies a view out of its storage into contiguous little-endian bytes.
fn materialise<'a>(
    p: &Pickle,
    t: &TensorView,
    storages: &Storages<'a>,
    budget: &mut usize,
) -> Result<RawTensor<'a>, String> {
    let s = storage_id(p, t.storage)?;
    let data = storages
        .by_key
        .get(s.key)
        .ok_or_else(|| format!("its storage '{}' is not in the file", s.key))?;
    if Some(data.len()) != s.numel.checked_mul(s.elem) {
        return Err(format!(
            "storage '{}' holds {} bytes, its {} elements need {}",
            s.key,
            data.len(),
            s.numel,
            s.numel.saturating_mul(s.elem)
        ));
    }
    let numel = t
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("its shape overflows")?;
    if numel == 0 {
        return Ok(RawTensor {
            dtype: s.dtype,
            shape: t.shape.clone(),
            data: Cow::Borrowed(&[]),
        });
    }
    // The furthest element a view reaches must lie inside its storage.
    let last = t
        .shape
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |a, (&d, &st)| {
            (d - 1).checked_mul(st).and_then(|x| a.checked_add(x))
        })
        .ok_or("its strides overflow")?;
    if last >= s.numel {
        return Err(format!(
            "its view reaches element {last} of a storage of {}",
            s.numel
        ));
    }
    let bytes = numel * s.elem; // numel ≤ s.numel (checked next), so no overflow
    if numel > s.numel {
        return Err(format!(
            "its {numel} elements are more than its storage's {}",
            s.numel
        ));
    }
    if bytes > *budget {
        return Err(format!(
            "views of shared storages copy more than twice the file's size by this one's \
             {bytes} bytes"
        ));
    }
    *budget -= bytes;
    let row_major = t
        .shape
        .iter()
        .zip(&t.stride)
        .rev()
        .try_fold(1usize, |expect, (&d, &st)| {
            (d == 1 || st == expect).then(|| expect * d)
        })
        .is_some();
    if row_major && !storages.big_endian {
        let start = t.offset * s.elem;
        let data = match data {
            Cow::Borrowed(d) => Cow::Borrowed(&d[start..start + bytes]),
            Cow::Owned(d) => Cow::Owned(d[start..start + bytes].to_vec()),
        };
        return Ok(RawTensor {
            dtype: s.dtype,
            shape: t.shape.clone(),
            data,
        });
    }
    let mut out = Vec::with_capacity(bytes);
    let mut index = vec![0usize; t.shape.len()];
    for _ in 0..numel {
        let at = t.offset
            + index
                .iter()
                .zip(&t.stride)
                .map(|(&i, &st)| i * st)
                .sum::<usize>();
        let el = &data[at * s.elem..(at + 1) * s.elem];
        if storages.big_endian {
            out.extend(el.iter().rev());
        } else {
            out.extend_from_slice(el);
        }
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < t.shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(RawTensor {
        dtype: s.dtype,
        shape: t.shape.clone(),
        data: Cow::Owned(out),
    })
}

#[cfg(test)]
mod tests;
