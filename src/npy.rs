//! Reading and writing NCHW tensors as NumPy `.npy` files. What a header claims is checked
//! against what the file holds before anything is allocated for it.

use std::fs::File;
use std::io::{BufWriter, Cursor};
use std::path::Path;

use ndarray::{Array4, ArrayD, Ix4};
use ndarray_npy::{ReadNpyError, ReadNpyExt, WriteNpyExt};

use crate::error::{Error, Result};
use crate::tensor::{Nchw, Tensor};

fn npy_error(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Npy {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Reads a 4-D float array (float32, or float64 narrowed to float32) as an NCHW tensor.
pub fn read_tensor(path: impl AsRef<Path>) -> Result<Tensor> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    tensor_from_bytes(&bytes, path)
}

/// [`read_tensor`] on the bytes of an .npy file (`path` only names it in errors).
pub fn tensor_from_bytes(bytes: &[u8], path: &Path) -> Result<Tensor> {
    check_size(bytes).map_err(|e| npy_error(path, e))?;
    let array: ArrayD<f32> = match ArrayD::<f32>::read_npy(Cursor::new(bytes)) {
        Ok(a) => a,
        Err(ReadNpyError::WrongDescriptor(_)) => {
            match ArrayD::<f64>::read_npy(Cursor::new(bytes)) {
                Ok(a) => a.mapv(|v| v as f32),
                Err(ReadNpyError::WrongDescriptor(d)) => {
                    return Err(npy_error(
                        path,
                        format!("dtype {d} is not float32 or float64"),
                    ));
                }
                Err(e) => return Err(npy_error(path, e)),
            }
        }
        Err(e) => return Err(npy_error(path, e)),
    };
    let a = array
        .into_dimensionality::<Ix4>()
        .map_err(|_| npy_error(path, "expected a 4-D array (N, C, H, W)"))?;
    let (n, c, h, w) = a.dim();
    let data: Vec<f32> = a.iter().copied().collect();
    Tensor::new(Nchw { n, c, h, w }, data)
}

/// Writes an NCHW tensor as a float32 `.npy` file.
pub fn write_tensor(path: impl AsRef<Path>, t: &Tensor) -> Result<()> {
    write_array(path.as_ref(), t.shape(), t.data())
}

/// Writes an f64 batch of `shape` as a float64 `.npy` file.
pub fn write_f64(path: impl AsRef<Path>, shape: Nchw, data: &[f64]) -> Result<()> {
    write_array(path.as_ref(), shape, data)
}

fn write_array<T: ndarray_npy::WritableElement + Clone>(
    path: &Path,
    shape: Nchw,
    data: &[T],
) -> Result<()> {
    let a = Array4::from_shape_vec(shape.dims(), data.to_vec()).map_err(|e| npy_error(path, e))?;
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    a.write_npy(BufWriter::new(file))
        .map_err(|e| npy_error(path, e))
}

/// Reads a 4-D float array (float64, or float32 widened) as an NCHW batch in f64.
pub fn read_batch_f64(path: impl AsRef<Path>) -> Result<(Nchw, Vec<f64>)> {
    let path = path.as_ref();
    let (dims, data) = read_f64(path)?;
    let &[n, c, h, w] = dims.as_slice() else {
        return Err(npy_error(path, "expected a 4-D array (N, C, H, W)"));
    };
    Ok((Nchw { n, c, h, w }, data))
}

/// Reads any float array as f64 values with its shape (for reference heatmaps).
pub fn read_f64(path: impl AsRef<Path>) -> Result<(Vec<usize>, Vec<f64>)> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    check_size(&bytes).map_err(|e| npy_error(path, e))?;
    let a = match ArrayD::<f64>::read_npy(Cursor::new(&bytes)) {
        Ok(a) => a,
        Err(ReadNpyError::WrongDescriptor(_)) => {
            let t = tensor_from_bytes(&bytes, path)?;
            let wide = t.data().iter().map(|&v| f64::from(v)).collect();
            ArrayD::from_shape_vec(t.shape().dims().to_vec(), wide)
                .expect("a tensor's data fills its shape")
        }
        Err(e) => return Err(npy_error(path, e)),
    };
    Ok((a.shape().to_vec(), a.iter().copied().collect()))
}

/// Checks that the data an .npy header describes (shape × element size) is exactly what
/// follows the header: a header may claim terabytes, or a file may be cut short.
fn check_size(bytes: &[u8]) -> std::result::Result<(), String> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    if !bytes.starts_with(MAGIC) || bytes.len() < 10 {
        return Err("not an .npy file (no \\x93NUMPY magic)".into());
    }
    let (len, start): (usize, usize) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy format version {v}")),
    };
    let header = bytes
        .get(start..start.saturating_add(len))
        .ok_or("the .npy header is cut short")?;
    let header = String::from_utf8_lossy(header);
    let field = |name: &str| -> Option<&str> {
        let at = header.find(&format!("'{name}'"))? + name.len() + 2;
        Some(header[at..].trim_start().strip_prefix(':')?.trim_start())
    };
    let descr = field("descr").ok_or("the .npy header has no 'descr'")?;
    let itemsize: usize = descr
        .trim_start_matches(['\'', '"', '<', '>', '|', '='])
        .chars()
        .skip(1)
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .map_err(|_| "cannot read the element size of the dtype".to_string())?;
    let shape = field("shape").ok_or("the .npy header has no 'shape'")?;
    let dims = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("malformed 'shape' in the .npy header")?;
    let mut elements: usize = 1;
    for d in dims.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let d: usize = d
            .parse()
            .map_err(|_| format!("malformed dimension '{d}'"))?;
        elements = elements
            .checked_mul(d)
            .ok_or("the shape's size overflows")?;
    }
    let claimed = elements
        .checked_mul(itemsize)
        .ok_or("the data size overflows")?;
    let present = bytes.len() - (start + len);
    if claimed != present {
        return Err(format!(
            "the header claims {claimed} bytes of data, the file holds {present}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let dir = std::env::temp_dir().join(format!("hrnet-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t = Tensor::random_normal(
            Nchw {
                n: 2,
                c: 3,
                h: 4,
                w: 5,
            },
            rand::random(),
        );
        let p = dir.join("t.npy");
        write_tensor(&p, &t).unwrap();
        assert_eq!(read_tensor(&p).unwrap(), t);
        let (shape, wide) = read_f64(&p).unwrap();
        assert_eq!(shape, vec![2, 3, 4, 5]);
        assert_eq!(wide[7], f64::from(t.data()[7]));

        let p3 = dir.join("rank3.npy");
        ndarray::Array3::<f32>::ones((1, 2, 3))
            .write_npy(File::create(&p3).unwrap())
            .unwrap();
        assert!(read_tensor(&p3).unwrap_err().to_string().contains("4-D"));
        let pi = dir.join("int.npy");
        Array4::<i32>::ones((1, 1, 1, 1))
            .write_npy(File::create(&pi).unwrap())
            .unwrap();
        assert!(
            read_tensor(&pi)
                .unwrap_err()
                .to_string()
                .contains("not float32")
        );
        let pd = dir.join("f64.npy");
        Array4::<f64>::from_elem((1, 1, 1, 2), 0.25)
            .write_npy(File::create(&pd).unwrap())
            .unwrap();
        assert_eq!(read_tensor(&pd).unwrap().data(), &[0.25, 0.25]);
        assert!(matches!(
            read_tensor(dir.join("absent.npy")),
            Err(Error::Io { .. })
        ));
        std::fs::write(dir.join("junk.npy"), b"\x93NUMPY garbage").unwrap();
        assert!(read_tensor(dir.join("junk.npy")).is_err());

        // A header that claims 100 GB is refused without allocating it.
        let mut lie = b"\x93NUMPY\x01\x00".to_vec();
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 3, 300, 300), }";
        lie.extend_from_slice(&(header.len() as u16).to_le_bytes());
        lie.extend_from_slice(header.as_bytes());
        lie.extend_from_slice(&[0; 64]);
        let e = tensor_from_bytes(&lie, Path::new("lie.npy"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("claims 108000000000 bytes"), "{e}");
        // A file cut short likewise.
        let bytes = std::fs::read(&p).unwrap();
        let e = tensor_from_bytes(&bytes[..bytes.len() - 4], &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("claims"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
