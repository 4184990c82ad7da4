//! MATLAB's MAT-file format, level 5 (what MATLAB's `save` writes, zlib-compressed from
//! version 7 on, and what SciPy's `savemat` writes), read as far as MPII's ground truth and
//! predictions need: numeric arrays, char arrays and cell arrays of them, either byte
//! order. Structs, sparse arrays, objects and complex numbers are not read: such an array
//! is kept as [`MatArray::Unread`] (its bytes skipped), so a file that holds one beside the
//! arrays wanted still reads, as SciPy's `loadmat` reads it, and a reader asking for it
//! gets an error that says what it is.
//! Written: one float32 array ([`save_f32`]), as the official MPII code writes `pred.mat`.
//!
//! The file is untrusted: every size is checked against the bytes that hold it before
//! anything is allocated, decompression stops at a bound, and cells nest at most
//! [`MAX_DEPTH`] deep. Nothing here panics (`fuzz/fuzz_targets/npy.rs` runs it).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// An array of a MAT-file, its `dims` in MATLAB's order (at least two).
#[derive(Clone, Debug, PartialEq)]
pub enum MatArray {
    /// A numeric or logical array, every class widened to f64, in column-major order.
    Numeric {
        /// The dimensions.
        dims: Vec<usize>,
        /// The elements, the first index running fastest.
        data: Vec<f64>,
    },
    /// A char array; for the usual one-row array, its text.
    Char {
        /// The dimensions.
        dims: Vec<usize>,
        /// The characters in column-major order.
        text: String,
    },
    /// A cell array, its cells in column-major order.
    Cell {
        /// The dimensions.
        dims: Vec<usize>,
        /// The cells.
        cells: Vec<MatArray>,
    },
    /// An array of a kind this reader does not read (a struct, object, sparse or complex
    /// array), its contents skipped.
    Unread {
        /// The dimensions.
        dims: Vec<usize>,
        /// What it is: `struct`, `object`, `sparse`, `complex`, or its class number.
        kind: String,
    },
}

impl MatArray {
    /// What the array is, for messages: "a numeric array of dimensions [16, 2958]".
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            MatArray::Numeric { dims, .. } => format!("a numeric array of dimensions {dims:?}"),
            MatArray::Char { dims, .. } => format!("a char array of dimensions {dims:?}"),
            MatArray::Cell { dims, .. } => format!("a cell array of dimensions {dims:?}"),
            MatArray::Unread { dims, kind } => {
                format!("a {kind} array of dimensions {dims:?}, which is not read")
            }
        }
    }
}

/// How deep cells may nest.
pub const MAX_DEPTH: usize = 16;

/// Decompressed bytes a file may hold: 1 GiB, and never more than deflate's best ratio
/// (1032:1) allows for the compressed bytes.
const MAX_INFLATED: usize = 1 << 30;
const DEFLATE_RATIO: usize = 1032;

const HEADER: usize = 128;

// Data types of data elements (the MAT-file format's `mi*`).
const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
const MI_UTF8: u32 = 16;
const MI_UTF16: u32 = 17;

// Array classes (`mx*_CLASS`).
const MX_CELL: u8 = 1;
const MX_STRUCT: u8 = 2;
const MX_OBJECT: u8 = 3;
const MX_CHAR: u8 = 4;
const MX_SPARSE: u8 = 5;
const MX_DOUBLE: u8 = 6;
const MX_SINGLE: u8 = 7;
const MX_UINT64: u8 = 15;
const COMPLEX_FLAG: u32 = 0x800;

/// The named arrays of a MAT-file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MatFile {
    /// Arrays by variable name.
    pub arrays: BTreeMap<String, MatArray>,
}

impl MatFile {
    /// Reads a MAT-file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&bytes, path)
    }

    /// [`MatFile::load`] on the file's bytes (`path` only names it in errors).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        parse(bytes).map_err(|reason| Error::Mat {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// The array named `name`, or an error naming the file and the arrays it has.
    pub fn get(&self, name: &str, path: &Path) -> Result<&MatArray> {
        self.arrays.get(name).ok_or_else(|| Error::Mat {
            path: PathBuf::from(path),
            reason: format!(
                "no array '{name}' (the file has: {})",
                self.arrays.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        })
    }
}

/// Writes one float32 array as a level-5 MAT-file, as SciPy's `savemat` writes a float32
/// NumPy array (MATLAB `single`, uncompressed, little-endian): `data` in column-major
/// order, `dims` at least two.
pub fn save_f32(path: impl AsRef<Path>, name: &str, dims: &[usize], data: &[f32]) -> Result<()> {
    let path = path.as_ref();
    let bad = |reason: String| Error::Mat {
        path: path.to_path_buf(),
        reason,
    };
    if dims.len() < 2 || dims.iter().product::<usize>() != data.len() {
        return Err(bad(format!(
            "{} numbers do not fill dimensions {dims:?}",
            data.len()
        )));
    }
    let dims: Vec<i32> = dims
        .iter()
        .map(|&d| i32::try_from(d).map_err(|_| bad(format!("dimension {d} is too large"))))
        .collect::<Result<_>>()?;
    let element = |kind: u32, bytes: &[u8]| -> Vec<u8> {
        let mut out = [kind.to_le_bytes(), (bytes.len() as u32).to_le_bytes()].concat();
        out.extend(bytes);
        out.resize(8 + bytes.len().div_ceil(8) * 8, 0);
        out
    };
    let flags = [u32::from(MX_SINGLE).to_le_bytes(), [0; 4]].concat();
    let dims: Vec<u8> = dims.iter().flat_map(|d| d.to_le_bytes()).collect();
    let numbers: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let body = [
        element(MI_UINT32, &flags),
        element(MI_INT32, &dims),
        element(MI_INT8, name.as_bytes()),
        element(MI_SINGLE, &numbers),
    ]
    .concat();
    let matrix = element(MI_MATRIX, &body);
    if u32::try_from(matrix.len()).is_err() {
        return Err(bad("more than 4 GiB for one array".into()));
    }
    let mut header = b"MATLAB 5.0 MAT-file, written by hrnet".to_vec();
    header.resize(116, b' ');
    header.extend([0; 8]); // no subsystem data
    header.extend([0x00, 0x01]); // version 0x0100
    header.extend(b"IM"); // little-endian
    std::fs::write(path, [header, matrix].concat()).map_err(|e| Error::io(path, e))
}

type Parsed<T> = std::result::Result<T, String>;

fn parse(bytes: &[u8]) -> Parsed<MatFile> {
    if bytes.len() < HEADER {
        return Err(format!(
            "not a MAT-file: {} bytes, shorter than the 128-byte header",
            bytes.len()
        ));
    }
    if bytes.get(512..).is_some_and(|b| b.starts_with(b"\x89HDF")) {
        return Err("a MAT-file of version 7.3 (HDF5), which is not read; save with -v7".into());
    }
    let little = match &bytes[126..128] {
        b"IM" => true,
        b"MI" => false,
        _ => return Err("not a MAT-file of level 5 (no byte-order mark in the header)".into()),
    };
    let mut file = MatFile::default();
    let mut rest = Reader {
        bytes: &bytes[HEADER..],
        little,
    };
    while !rest.bytes.is_empty() {
        let (kind, body) = rest.element(false)?;
        let (name, array) = match kind {
            MI_COMPRESSED => {
                let inflated = inflate(body)?;
                let mut inner = Reader {
                    bytes: &inflated,
                    little,
                };
                let (kind, body) = inner.element(true)?;
                if kind != MI_MATRIX {
                    return Err(format!(
                        "a compressed element holds type {kind}, not an array"
                    ));
                }
                matrix(body, little, 0)?
            }
            MI_MATRIX => matrix(body, little, 0)?,
            other => return Err(format!("a top-level element of type {other}, not an array")),
        };
        file.arrays.insert(name, array);
    }
    Ok(file)
}

/// Inflates a zlib stream, refusing more than the bound.
fn inflate(body: &[u8]) -> Parsed<Vec<u8>> {
    let bound = body.len().saturating_mul(DEFLATE_RATIO).min(MAX_INFLATED);
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(body)
        .take(bound as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("a compressed array does not inflate ({e})"))?;
    if out.len() > bound {
        return Err(format!("a compressed array inflates past {bound} bytes"));
    }
    Ok(out)
}

struct Reader<'a> {
    bytes: &'a [u8],
    little: bool,
}

impl<'a> Reader<'a> {
    fn u32_at(&self, at: usize) -> u32 {
        let b = [
            self.bytes[at],
            self.bytes[at + 1],
            self.bytes[at + 2],
            self.bytes[at + 3],
        ];
        if self.little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    }

    /// The next data element: its type and its bytes. Inside an array (`padded`), a
    /// full-size element is followed by padding to 8 bytes; a small one (type and size in
    /// one word, up to 4 bytes of data) always takes 8.
    fn element(&mut self, padded: bool) -> Parsed<(u32, &'a [u8])> {
        if self.bytes.len() < 8 {
            return Err(format!(
                "{} stray bytes where an element was expected",
                self.bytes.len()
            ));
        }
        let word = self.u32_at(0);
        let (kind, len, start, end) = if word >> 16 != 0 {
            (word & 0xffff, (word >> 16) as usize, 4, 8)
        } else {
            let len = self.u32_at(4) as usize;
            let end = if padded { len.div_ceil(8) * 8 } else { len };
            (word, len, 8, 8usize.saturating_add(end))
        };
        if len > end - start || end > self.bytes.len() {
            return Err(format!(
                "an element of type {kind} claims {len} bytes, {} are left",
                self.bytes.len().saturating_sub(start)
            ));
        }
        let body = &self.bytes[start..start + len];
        self.bytes = self.bytes.get(end..).unwrap_or_default();
        Ok((kind, body))
    }
}

/// An array element's body: its name and contents.
fn matrix(body: &[u8], little: bool, depth: usize) -> Parsed<(String, MatArray)> {
    if depth > MAX_DEPTH {
        return Err(format!("cells nested more than {MAX_DEPTH} deep"));
    }
    if body.is_empty() {
        // MATLAB writes an empty array (an empty cell, say) as an element of no bytes.
        return Ok((
            String::new(),
            MatArray::Numeric {
                dims: vec![0, 0],
                data: Vec::new(),
            },
        ));
    }
    let mut r = Reader {
        bytes: body,
        little,
    };
    let (kind, flags) = r.element(true)?;
    if kind != MI_UINT32 || flags.len() != 8 {
        return Err("an array without its flags".into());
    }
    let flags = Reader {
        bytes: flags,
        little,
    }
    .u32_at(0);
    let class = (flags & 0xff) as u8;
    let (kind, dims) = r.element(true)?;
    if kind != MI_INT32 || dims.len() < 8 || !dims.len().is_multiple_of(4) {
        return Err("an array without at least two dimensions".into());
    }
    let dims_reader = Reader {
        bytes: dims,
        little,
    };
    let dims: Vec<usize> = (0..dims.len() / 4)
        .map(|i| dims_reader.u32_at(4 * i) as i32)
        .map(|d| usize::try_from(d).map_err(|_| format!("a negative dimension {d}")))
        .collect::<Parsed<_>>()?;
    let count = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or("dimensions whose product overflows")?;
    let (kind, name) = r.element(true)?;
    if kind != MI_INT8 && kind != MI_UINT8 {
        return Err("an array without a name element".into());
    }
    let name = String::from_utf8_lossy(name).into_owned();
    let array = match class {
        MX_CELL => {
            // Each cell takes at least one 8-byte tag: the count is bounded by the bytes.
            if count > r.bytes.len() / 8 {
                return Err(format!(
                    "a cell array of {count} cells in {} bytes",
                    r.bytes.len()
                ));
            }
            let mut cells = Vec::with_capacity(count);
            for _ in 0..count {
                let (kind, cell) = r.element(true)?;
                if kind != MI_MATRIX {
                    return Err(format!("a cell of type {kind}, not an array"));
                }
                cells.push(matrix(cell, little, depth + 1)?.1);
            }
            MatArray::Cell { dims, cells }
        }
        MX_CHAR => {
            let (kind, data) = r.element(true)?;
            let text = match kind {
                MI_UTF8 | MI_UINT8 | MI_INT8 => String::from_utf8_lossy(data).into_owned(),
                MI_UINT16 | MI_UTF16 => {
                    let units: Vec<u16> = data
                        .chunks_exact(2)
                        .map(|c| {
                            if little {
                                u16::from_le_bytes([c[0], c[1]])
                            } else {
                                u16::from_be_bytes([c[0], c[1]])
                            }
                        })
                        .collect();
                    String::from_utf16_lossy(&units)
                }
                other => return Err(format!("a char array stored as type {other}")),
            };
            MatArray::Char { dims, text }
        }
        MX_DOUBLE..=MX_UINT64 if flags & COMPLEX_FLAG != 0 => MatArray::Unread {
            dims,
            kind: "complex".into(),
        },
        MX_DOUBLE..=MX_UINT64 => {
            let (kind, data) = r.element(true)?;
            let data = numbers(kind, data, little)?;
            if data.len() != count {
                return Err(format!(
                    "array '{name}' of dimensions {dims:?} holds {} numbers",
                    data.len()
                ));
            }
            MatArray::Numeric { dims, data }
        }
        other => MatArray::Unread {
            dims,
            kind: match other {
                MX_STRUCT => "struct".into(),
                MX_OBJECT => "object".into(),
                MX_SPARSE => "sparse".into(),
                _ => format!("class-{other}"),
            },
        },
    };
    Ok((name, array))
}

/// The numbers of a numeric data element, widened to f64 (exactly, but for 64-bit
/// integers beyond 2^53).
fn numbers(kind: u32, data: &[u8], little: bool) -> Parsed<Vec<f64>> {
    fn each<const N: usize>(data: &[u8], little: bool, f: impl Fn([u8; N]) -> f64) -> Vec<f64> {
        data.chunks_exact(N)
            .map(|c| {
                let mut b = [0u8; N];
                b.copy_from_slice(c);
                if !little {
                    b.reverse();
                }
                f(b)
            })
            .collect()
    }
    let size = match kind {
        MI_INT8 | MI_UINT8 => 1,
        MI_INT16 | MI_UINT16 => 2,
        MI_INT32 | MI_UINT32 | MI_SINGLE => 4,
        MI_DOUBLE | MI_INT64 | MI_UINT64 => 8,
        other => return Err(format!("numbers stored as type {other}")),
    };
    if !data.len().is_multiple_of(size) {
        return Err(format!("{} bytes of {size}-byte numbers", data.len()));
    }
    // Little-endian decoding after the byte swap above.
    Ok(match kind {
        MI_INT8 => data.iter().map(|&b| f64::from(b as i8)).collect(),
        MI_UINT8 => data.iter().map(|&b| f64::from(b)).collect(),
        MI_INT16 => each(data, little, |b| f64::from(i16::from_le_bytes(b))),
        MI_UINT16 => each(data, little, |b| f64::from(u16::from_le_bytes(b))),
        MI_INT32 => each(data, little, |b| f64::from(i32::from_le_bytes(b))),
        MI_UINT32 => each(data, little, |b| f64::from(u32::from_le_bytes(b))),
        MI_SINGLE => each(data, little, |b| f64::from(f32::from_le_bytes(b))),
        MI_INT64 => each(data, little, |b| i64::from_le_bytes(b) as f64),
        MI_UINT64 => each(data, little, |b| u64::from_le_bytes(b) as f64),
        _ => each(data, little, f64::from_le_bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Writes MAT-files by hand, in either byte order.
    struct Writer {
        little: bool,
    }

    impl Writer {
        /// Little-endian bytes in the file's byte order.
        fn ordered<const N: usize>(&self, mut le: [u8; N]) -> [u8; N] {
            if !self.little {
                le.reverse();
            }
            le
        }

        fn u32(&self, v: u32) -> [u8; 4] {
            self.ordered(v.to_le_bytes())
        }

        /// A data element, small (type and size in one word) when it fits in 4 bytes.
        fn element(&self, kind: u32, data: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            if data.len() <= 4 && kind != MI_MATRIX {
                out.extend(self.u32(((data.len() as u32) << 16) | kind));
                out.extend(data);
                out.resize(8, 0);
            } else {
                out.extend(self.u32(kind));
                out.extend(self.u32(data.len() as u32));
                out.extend(data);
                out.resize(8 + data.len().div_ceil(8) * 8, 0);
            }
            out
        }

        fn matrix(&self, class: u8, flags: u32, dims: &[i32], name: &str, rest: &[u8]) -> Vec<u8> {
            let mut body = self.element(
                MI_UINT32,
                &[self.u32(u32::from(class) | flags), self.u32(0)].concat(),
            );
            let dims: Vec<u8> = dims.iter().flat_map(|&d| self.u32(d as u32)).collect();
            body.extend(self.element(MI_INT32, &dims));
            body.extend(self.element(MI_INT8, name.as_bytes()));
            body.extend(rest);
            self.element(MI_MATRIX, &body)
        }

        fn file(&self, elements: &[Vec<u8>]) -> Vec<u8> {
            let mut out = b"MATLAB 5.0 MAT-file, written by hrnet's tests".to_vec();
            out.resize(124, b' ');
            out.extend(if self.little { [0, 1] } else { [1, 0] });
            out.extend(if self.little { b"IM" } else { b"MI" });
            for e in elements {
                out.extend(e);
            }
            out
        }

        fn doubles(&self, v: &[f64]) -> Vec<u8> {
            let bytes: Vec<u8> = v
                .iter()
                .flat_map(|x| self.ordered(x.to_le_bytes()))
                .collect();
            self.element(MI_DOUBLE, &bytes)
        }

        fn text(&self, name: &str, s: &str) -> Vec<u8> {
            let units: Vec<u8> = s
                .encode_utf16()
                .flat_map(|u| self.ordered(u.to_le_bytes()))
                .collect();
            let n = s.encode_utf16().count() as i32;
            self.matrix(MX_CHAR, 0, &[1, n], name, &self.element(MI_UINT16, &units))
        }
    }

    fn parsed(bytes: &[u8]) -> std::result::Result<MatFile, String> {
        parse(bytes)
    }

    #[test]
    fn arrays_of_each_kind_in_both_byte_orders() {
        for little in [true, false] {
            let w = Writer { little };
            let numbers = w.matrix(
                MX_DOUBLE,
                0,
                &[2, 3],
                "x",
                &w.doubles(&[1.0, 2.0, 3.0, 4.0, 5.5, -6.0]),
            );
            // Two int16s fit a small element; MATLAB stores doubles that are integers so.
            let small: Vec<u8> = [-7i16, 300]
                .iter()
                .flat_map(|v| {
                    if little {
                        v.to_le_bytes()
                    } else {
                        v.to_be_bytes()
                    }
                })
                .collect();
            let ints = w.matrix(MX_DOUBLE, 0, &[1, 2], "k", &w.element(MI_INT16, &small));
            let cells = [
                w.text("", "head"),
                w.text("", "lsho"),
                w.matrix(MX_DOUBLE, 0, &[0, 0], "", &w.doubles(&[])),
            ]
            .concat();
            let cell = w.matrix(MX_CELL, 0, &[1, 3], "names", &cells);
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            z.write_all(&w.text("label", "pelv")).unwrap();
            let compressed = {
                let data = z.finish().unwrap();
                // Compressed elements are not padded.
                [
                    w.u32(MI_COMPRESSED).to_vec(),
                    w.u32(data.len() as u32).to_vec(),
                    data,
                ]
                .concat()
            };
            let file = parsed(&w.file(&[numbers, compressed, ints, cell])).unwrap();
            assert_eq!(
                file.arrays["x"],
                MatArray::Numeric {
                    dims: vec![2, 3],
                    data: vec![1.0, 2.0, 3.0, 4.0, 5.5, -6.0]
                }
            );
            assert_eq!(
                file.arrays["k"],
                MatArray::Numeric {
                    dims: vec![1, 2],
                    data: vec![-7.0, 300.0]
                }
            );
            assert_eq!(
                file.arrays["label"],
                MatArray::Char {
                    dims: vec![1, 4],
                    text: "pelv".into()
                }
            );
            let MatArray::Cell { dims, cells } = &file.arrays["names"] else {
                panic!("a cell array")
            };
            assert_eq!(dims, &[1, 3]);
            assert_eq!(
                cells[1],
                MatArray::Char {
                    dims: vec![1, 4],
                    text: "lsho".into()
                }
            );
            assert_eq!(
                cells[2],
                MatArray::Numeric {
                    dims: vec![0, 0],
                    data: vec![]
                }
            );
        }
    }

    #[test]
    fn a_written_float32_array_reads_back() {
        let path = std::env::temp_dir().join(format!("hrnet-mat-{}.mat", std::process::id()));
        let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.1 - 0.35).collect();
        save_f32(&path, "preds", &[2, 3, 2], &data).unwrap();
        let file = MatFile::load(&path).unwrap();
        assert_eq!(
            file.arrays["preds"],
            MatArray::Numeric {
                dims: vec![2, 3, 2],
                data: data.iter().map(|&v| f64::from(v)).collect()
            }
        );
        assert!(save_f32(&path, "preds", &[5, 3], &data).is_err());
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn broken_and_unsupported_files_are_refused() {
        let w = Writer { little: true };
        let good = w.file(&[w.matrix(MX_DOUBLE, 0, &[1, 2], "x", &w.doubles(&[1.0, 2.0]))]);
        // Every cut of a good file is refused, or reads the arrays that are whole.
        for cut in 0..good.len() {
            let r = parsed(&good[..cut]);
            assert!(r.is_err() || cut == HEADER, "cut at {cut}");
        }
        let err = |bytes: &[u8]| parsed(bytes).unwrap_err();
        assert!(err(b"short").contains("128-byte header"));
        let mut hdf = good.clone();
        hdf.resize(512, 0);
        hdf.extend(b"\x89HDF\r\n\x1a\n");
        assert!(err(&hdf).contains("7.3 (HDF5)"));
        let mut no_mark = good.clone();
        no_mark[126] = b'X';
        assert!(err(&no_mark).contains("byte-order mark"));
        // An element claiming more bytes than the file has.
        let mut lying = good.clone();
        lying[HEADER + 4..HEADER + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(err(&lying).contains("claims"), "{}", err(&lying));
        // Dimensions that do not match the data, or overflow.
        let e = err(&w.file(&[w.matrix(MX_DOUBLE, 0, &[2, 2], "x", &w.doubles(&[1.0]))]));
        assert!(e.contains("holds 1 numbers"), "{e}");
        let e = err(&w.file(&[w.matrix(
            MX_DOUBLE,
            0,
            &[i32::MAX, i32::MAX, i32::MAX],
            "x",
            &w.doubles(&[1.0]),
        )]));
        assert!(e.contains("overflows"), "{e}");
        let e = err(&w.file(&[w.matrix(MX_CELL, 0, &[1, 1 << 30], "c", &[])]));
        assert!(e.contains("cell array of 1073741824 cells"), "{e}");
        // Complex numbers, structs, sparse arrays: kept unread beside what is read, inside
        // cells too; asking for one says what it is.
        let struct_body = [
            w.element(MI_INT32, &w.u32(4)),
            w.element(MI_INT8, b"who\0"),
            w.matrix(MX_CHAR, 0, &[1, 2], "", &w.element(MI_UTF8, b"me")),
        ]
        .concat();
        let f = MatFile::parse(
            &w.file(&[
                w.matrix(
                    MX_DOUBLE,
                    COMPLEX_FLAG,
                    &[1, 1],
                    "z",
                    &w.doubles(&[1.0, 2.0]),
                ),
                w.matrix(MX_STRUCT, 0, &[1, 1], "s", &struct_body),
                w.matrix(MX_SPARSE, 0, &[3, 3], "sp", &w.doubles(&[1.0])),
                w.matrix(
                    MX_CELL,
                    0,
                    &[1, 2],
                    "c",
                    &[
                        w.matrix(MX_STRUCT, 0, &[2, 1], "", &struct_body),
                        w.matrix(MX_DOUBLE, 0, &[1, 1], "", &w.doubles(&[3.0])),
                    ]
                    .concat(),
                ),
                w.matrix(MX_DOUBLE, 0, &[1, 1], "x", &w.doubles(&[4.0])),
            ]),
            Path::new("t.mat"),
        )
        .unwrap();
        let path = Path::new("t.mat");
        assert_eq!(
            f.get("x", path).unwrap(),
            &MatArray::Numeric {
                dims: vec![1, 1],
                data: vec![4.0]
            }
        );
        for (name, kind) in [("z", "complex"), ("s", "struct"), ("sp", "sparse")] {
            let a = f.get(name, path).unwrap();
            assert!(
                matches!(a, MatArray::Unread { kind: k, .. } if k == kind),
                "{a:?}"
            );
            assert!(
                a.describe().contains("which is not read"),
                "{}",
                a.describe()
            );
        }
        let MatArray::Cell { cells, .. } = f.get("c", path).unwrap() else {
            panic!("a cell array");
        };
        assert_eq!(
            cells[0],
            MatArray::Unread {
                dims: vec![2, 1],
                kind: "struct".into()
            }
        );
        assert_eq!(
            cells[1],
            MatArray::Numeric {
                dims: vec![1, 1],
                data: vec![3.0]
            }
        );
        // Cells nested deeper than MAX_DEPTH.
        let mut nested = w.matrix(MX_DOUBLE, 0, &[1, 1], "", &w.doubles(&[1.0]));
        for _ in 0..=MAX_DEPTH {
            nested = w.matrix(MX_CELL, 0, &[1, 1], "", &nested);
        }
        assert!(err(&w.file(&[nested])).contains("nested"));
        // A compressed element that is not zlib.
        let junk = [
            w.u32(MI_COMPRESSED).to_vec(),
            w.u32(4).to_vec(),
            b"junk".to_vec(),
        ]
        .concat();
        assert!(err(&w.file(&[junk])).contains("does not inflate"));
    }
}
