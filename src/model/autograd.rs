//! Recorded ops with a fast CPU backward pass, for the training forward.
//! candle differentiates a broadcast add or multiply by summing the
//! gradient over the broadcast dimensions with its generic strided
//! reduction, which made bias and LayerNorm-affine gradients a large share
//! of a small model's step. Here the sum is one pass over the rows. Softmax,
//! which candle differentiates as five separate ops, is one op each way. Other devices and dtypes take
//! candle's composite ops.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};

use super::cpu;

fn cpu_f32(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| cpu::is_cpu_f32(t))
}

/// `x + b` for `x: [..., H]` and `b: [H]`.
pub fn bias_add(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    if cpu_f32(&[x, b]) {
        x.contiguous()?.apply_op2(b, BiasAdd)
    } else {
        x.broadcast_add(b)
    }
}

/// `x * w + b` for `x: [..., H]` and `w, b: [H]` (LayerNorm's affine step).
pub fn affine(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    if cpu_f32(&[x, w, b]) {
        x.contiguous()?.apply_op3(w, b, Affine)
    } else {
        x.broadcast_mul(w)?.broadcast_add(b)
    }
}

/// `softmax(x)` over the last dimension.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    if cpu_f32(&[x]) {
        x.contiguous()?.apply_op1(Softmax)
    } else {
        candle_nn::ops::softmax(x, candle_core::D::Minus1)
    }
}

/// `nn.LayerNorm` over the last dimension: `(x - mean) / sqrt(var + eps) * w + b`,
/// in candle's recorded ops with the affine step fused. (A single op with
/// a hand-written backward was 10% faster on the demo, but its gradients
/// strayed up to 1.2e-4 from PyTorch's on the parity fixtures, where these
/// stay within 6.5e-5.)
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let centred = x.broadcast_sub(&x.mean_keepdim(candle_core::D::Minus1)?)?;
    let var = centred.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
    let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    affine(&normed.to_dtype(w.dtype())?, w, b)
}

/// A tensor's values as one contiguous f32 vector.
fn values(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "softmax input")?;
        let n = *l.dims().last().unwrap_or(&1);
        let mut out = x.to_vec();
        for row in out.chunks_exact_mut(n.max(1)) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for v in row.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            row.iter_mut().for_each(|v| *v /= sum);
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let n = res.dim(candle_core::D::Minus1)?;
        let (y, g) = (values(res)?, values(grad)?);
        let mut dx = vec![0f32; y.len()];
        for ((d, y), g) in dx
            .chunks_exact_mut(n)
            .zip(y.chunks_exact(n))
            .zip(g.chunks_exact(n))
        {
            let dot: f32 = y.iter().zip(g).map(|(a, b)| a * b).sum();
            for ((d, y), g) in d.iter_mut().zip(y).zip(g) {
                *d = y * (g - dot);
            }
        }
        Ok(Some(Tensor::from_vec(dx, res.shape(), res.device())?))
    }
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: expected f32");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

fn row_len(x: &Layout, h: usize, what: &str) -> Result<()> {
    if x.dims().last() != Some(&h) {
        candle_core::bail!(
            "{what}: rows of {:?} do not match a parameter of {h}",
            x.dims()
        );
    }
    Ok(())
}

/// Sums of `grad` and of `grad * x` over all rows, `[H]` each.
fn column_sums(grad: &Tensor, x: Option<&Tensor>, h: usize) -> Result<(Tensor, Option<Tensor>)> {
    let grad = grad.to_dtype(DType::F32)?.contiguous()?;
    let g = grad.flatten_all()?.to_vec1::<f32>()?;
    let mut sum = vec![0f32; h];
    for row in g.chunks_exact(h) {
        sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
    }
    let weighted = match x {
        Some(x) => {
            let x = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
            let mut acc = vec![0f32; h];
            for (row, xs) in g.chunks_exact(h).zip(x.chunks_exact(h)) {
                for ((a, gv), xv) in acc.iter_mut().zip(row).zip(xs) {
                    *a += gv * xv;
                }
            }
            Some(Tensor::from_vec(acc, h, grad.device())?)
        }
        None => None,
    };
    Ok((Tensor::from_vec(sum, h, grad.device())?, weighted))
}

struct BiasAdd;

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "bias-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, b) = (slice(s1, l1, "bias-add input")?, slice(s2, l2, "bias")?);
        row_len(l1, b.len(), "bias-add")?;
        let mut out = x.to_vec();
        for row in out.chunks_exact_mut(b.len()) {
            row.iter_mut().zip(b).for_each(|(o, v)| *o += v);
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (db, _) = column_sums(grad, None, b.dim(0)?)?;
        Ok((Some(grad.clone()), Some(db)))
    }
}

struct Affine;

impl CustomOp3 for Affine {
    fn name(&self) -> &'static str {
        "affine"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "affine input")?;
        let (w, b) = (slice(s2, l2, "weight")?, slice(s3, l3, "bias")?);
        row_len(l1, w.len(), "affine")?;
        row_len(l3, w.len(), "affine bias")?;
        let mut out = x.to_vec();
        for row in out.chunks_exact_mut(w.len()) {
            for ((o, wv), bv) in row.iter_mut().zip(w).zip(b) {
                *o = *o * wv + bv;
            }
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (db, dw) = column_sums(grad, Some(x), w.dim(0)?)?;
        Ok((Some(grad.broadcast_mul(w)?), dw, Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The fast ops must give candle's composite ops' values and gradients.
    #[test]
    fn gradients_match_candles_broadcast_ops() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1., (3, 5, 4), &dev)?;
        let w = Var::randn(0f32, 1., 4, &dev)?;
        let b = Var::randn(0f32, 1., 4, &dev)?;
        let probe = Tensor::randn(0f32, 1., (3, 5, 4), &dev)?;
        let ln = |x: &Tensor| -> Result<Tensor> {
            let c = x.broadcast_sub(&x.mean_keepdim(candle_core::D::Minus1)?)?;
            let v = c.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
            c.broadcast_div(&(v + 1e-5)?.sqrt()?)?
                .broadcast_mul(&w)?
                .broadcast_add(&b)
        };
        let ours = (affine(&x, &w, &b)?
            + bias_add(&x, &b)?
            + softmax(&x)?
            + layer_norm(&x, &w, &b, 1e-5)?)?;
        let theirs = (x.broadcast_mul(&w)?.broadcast_add(&b)?
            + x.broadcast_add(&b)?
            + candle_nn::ops::softmax(&x, candle_core::D::Minus1)?
            + ln(&x)?)?;
        let diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
        };
        assert!(diff(&ours, &theirs)? < 1e-6);
        let g1 = (ours * &probe)?.sum_all()?.backward()?;
        let g2 = (theirs * &probe)?.sum_all()?.backward()?;
        for v in [&x, &w, &b] {
            let (a, b) = (g1.get(v).unwrap(), g2.get(v).unwrap());
            assert!(diff(a, b)? < 1e-5, "gradient differs by {}", diff(a, b)?);
        }
        Ok(())
    }
}
