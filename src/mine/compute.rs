//! Dense linear algebra on a Burn backend: the one place where mining touches tensors. Host code
//! keeps the vectors; blocks of rows go to the device, come back as distance blocks.
//!
//! On the CPU backend a matmul is OpenBLAS `sgemm` (multi-threaded); with the `cuda` feature the
//! same code runs on the GPU.

use burn::prelude::{Backend, Int, Tensor, TensorData};

use super::MineError;

/// A backend and device to run blocks on.
#[derive(Debug, Clone)]
pub struct Compute<B: Backend> {
    device: B::Device,
}

impl<B: Backend> Compute<B> {
    pub fn new(device: B::Device) -> Self {
        Self { device }
    }

    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// A `[rows, dim]` tensor of host data.
    pub fn matrix(&self, data: &[f32], rows: usize, dim: usize) -> Tensor<B, 2> {
        Tensor::from_data(TensorData::new(data.to_vec(), [rows, dim]), &self.device)
    }

    /// `q · cᵀ` for `nq` query rows and `nc` candidate rows: `nq × nc` dot products, row-major.
    pub fn dots(&self, q: &[f32], c: &[f32], dim: usize) -> Result<Vec<f32>, MineError> {
        let (nq, nc) = (q.len() / dim, c.len() / dim);
        let q = self.matrix(q, nq, dim);
        let c = self.matrix(c, nc, dim);
        host_f32(q.matmul(c.transpose()))
    }

    /// `q · cᵀ` against rows already on the device (`c`: `[nc, dim]`).
    pub fn dots_against(&self, q: &[f32], c: &Tensor<B, 2>) -> Result<Vec<f32>, MineError> {
        let dim = c.dims()[1];
        let q = self.matrix(q, q.len() / dim, dim);
        host_f32(q.matmul(c.clone().transpose()))
    }
}

/// A float tensor's values on the host.
pub fn host_f32<const D: usize, B: Backend>(t: Tensor<B, D>) -> Result<Vec<f32>, MineError> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| MineError::Compute(format!("{e:?}")))
}

/// An int tensor's values on the host.
pub fn host_usize<const D: usize, B: Backend>(t: Tensor<B, D, Int>) -> Vec<usize> {
    t.into_data()
        .iter::<i64>()
        .map(|v| v.max(0) as usize)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;

    #[test]
    fn dots_match_a_hand_computed_product() {
        let c = Compute::<Cpu>::new(Default::default());
        let q = [1.0, 2.0, 3.0, 4.0]; // 2 × 2
        let k = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]; // 3 × 2
        assert_eq!(
            c.dots(&q, &k, 2).unwrap(),
            vec![1.0, 2.0, 3.0, 3.0, 4.0, 7.0]
        );
    }
}
