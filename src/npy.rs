//! Reading and writing NCHW tensors as NumPy `.npy` files.

use std::fs::File;
use std::io::{BufReader, BufWriter};
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
    let open = || {
        File::open(path)
            .map(BufReader::new)
            .map_err(|e| Error::io(path, e))
    };
    let array: ArrayD<f32> = match ArrayD::<f32>::read_npy(open()?) {
        Ok(a) => a,
        Err(ReadNpyError::WrongDescriptor(_)) => match ArrayD::<f64>::read_npy(open()?) {
            Ok(a) => a.mapv(|v| v as f32),
            Err(ReadNpyError::WrongDescriptor(d)) => {
                return Err(npy_error(
                    path,
                    format!("dtype {d} is not float32 or float64"),
                ));
            }
            Err(e) => return Err(npy_error(path, e)),
        },
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
    let path = path.as_ref();
    let a = Array4::from_shape_vec(t.shape().dims(), t.data().to_vec())
        .map_err(|e| npy_error(path, e))?;
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    a.write_npy(BufWriter::new(file))
        .map_err(|e| npy_error(path, e))
}

/// Reads any float array as f64 values with its shape (for reference heatmaps).
pub fn read_f64(path: impl AsRef<Path>) -> Result<(Vec<usize>, Vec<f64>)> {
    let path = path.as_ref();
    let file = File::open(path)
        .map(BufReader::new)
        .map_err(|e| Error::io(path, e))?;
    let a = match ArrayD::<f64>::read_npy(file) {
        Ok(a) => a,
        Err(ReadNpyError::WrongDescriptor(_)) => read_tensor(path).map(|t| {
            let s = t.shape().dims().to_vec();
            ArrayD::from_shape_vec(s, t.data().iter().map(|&v| f64::from(v)).collect())
                .expect("a tensor's data fills its shape")
        })?,
        Err(e) => return Err(npy_error(path, e)),
    };
    Ok((a.shape().to_vec(), a.iter().copied().collect()))
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
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
