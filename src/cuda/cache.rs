//! Compiled kernels kept on disk between processes. NVRTC takes tens of seconds for the
//! tensor-core kernels, which every process that opens the GPU would otherwise pay.
//!
//! An entry holds what its machine code was made from (the program's full text, the
//! options but for the header folder's path, the architecture, NVRTC's version and a
//! checksum of the CUDA headers the kernels include) and is used only when all of it is
//! byte for byte what this process would compile: a changed kernel, compiler or header
//! finds no entry. A damaged entry (cut short, altered, of another format) is passed over
//! and replaced. Entries are written to a temporary file and renamed into place, so
//! processes sharing the folder never read half of one.
//!
//! The folder: `HRNET_KERNEL_CACHE` (`off` for none), else `$XDG_CACHE_HOME/hrnet/kernels`,
//! else `$HOME/.cache/hrnet/kernels`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable naming the folder, or `off`.
pub const ENV: &str = "HRNET_KERNEL_CACHE";

const MAGIC: &[u8] = b"hrnet kernel cache 1\n";

/// The folder compiled kernels are kept in, if any.
#[must_use]
pub fn dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(v) = std::env::var_os(ENV) {
        return (!v.is_empty() && v != "off").then(|| PathBuf::from(v));
    }
    if let Some(xdg) = var("XDG_CACHE_HOME").map(PathBuf::from)
        && xdg.is_absolute()
    {
        return Some(xdg.join("hrnet/kernels"));
    }
    var("HOME").map(|h| PathBuf::from(h).join(".cache/hrnet/kernels"))
}

/// Where the entry for program `name` on `arch` made from `material` lives.
fn entry_path(dir: &Path, name: &str, arch: &str, material: &[u8]) -> PathBuf {
    dir.join(format!(
        "{name}.{arch}.{:08x}.kernels",
        crc32fast::hash(material)
    ))
}

/// The machine code and compiler log stored for `material`, if a sound entry holds it.
#[must_use]
pub fn load(dir: &Path, name: &str, arch: &str, material: &[u8]) -> Option<(Vec<u8>, String)> {
    let bytes = std::fs::read(entry_path(dir, name, arch, material)).ok()?;
    let (body, sum) = bytes.split_last_chunk::<4>()?;
    if crc32fast::hash(body) != u32::from_le_bytes(*sum) {
        return None;
    }
    let mut rest = body.strip_prefix(MAGIC)?;
    let mut field = || -> Option<&[u8]> {
        let (len, tail) = rest.split_first_chunk::<8>()?;
        let len = usize::try_from(u64::from_le_bytes(*len)).ok()?;
        let (value, tail) = (tail.get(..len)?, tail.get(len..)?);
        rest = tail;
        Some(value)
    };
    let (stored, log, cubin) = (field()?, field()?, field()?);
    if stored != material || !rest.is_empty() {
        return None;
    }
    Some((cubin.to_vec(), String::from_utf8(log.to_vec()).ok()?))
}

/// Keeps `cubin` and `log` for `material`, replacing any entry of the same name.
pub fn store(
    dir: &Path,
    name: &str,
    arch: &str,
    material: &[u8],
    cubin: &[u8],
    log: &str,
) -> std::io::Result<()> {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let mut bytes = MAGIC.to_vec();
    for field in [material, log.as_bytes(), cubin] {
        bytes.extend((field.len() as u64).to_le_bytes());
        bytes.extend(field);
    }
    bytes.extend(crc32fast::hash(&bytes).to_le_bytes());
    std::fs::create_dir_all(dir)?;
    let path = entry_path(dir, name, arch, material);
    let temporary = path.with_extension(format!(
        "{}-{}.partial",
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&temporary, &bytes)
        .and_then(|()| std::fs::rename(&temporary, &path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&temporary);
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hrnet-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn entries_come_back_only_for_the_same_material_and_whole() {
        let dir = scratch("roundtrip");
        let (material, cubin, log) = (b"source and options".as_slice(), b"\x7fELF...", "ptxas");
        assert_eq!(load(&dir, "conv", "sm_90", material), None, "empty folder");
        store(&dir, "conv", "sm_90", material, cubin, log).unwrap();
        assert_eq!(
            load(&dir, "conv", "sm_90", material),
            Some((cubin.to_vec(), log.to_string()))
        );
        assert_eq!(load(&dir, "conv", "sm_90", b"other source"), None);
        assert_eq!(load(&dir, "conv", "sm_80", material), None);
        assert_eq!(load(&dir, "fill", "sm_90", material), None);
        // Every cut and every flipped byte of the entry is passed over, without a panic.
        let path = entry_path(&dir, "conv", "sm_90", material);
        let good = std::fs::read(&path).unwrap();
        for cut in 0..good.len() {
            std::fs::write(&path, &good[..cut]).unwrap();
            assert_eq!(load(&dir, "conv", "sm_90", material), None, "cut at {cut}");
        }
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x20;
            std::fs::write(&path, &bad).unwrap();
            assert_eq!(load(&dir, "conv", "sm_90", material), None, "byte {at}");
        }
        // A damaged entry is replaced by the next store.
        store(&dir, "conv", "sm_90", material, cubin, log).unwrap();
        assert!(load(&dir, "conv", "sm_90", material).is_some());
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
