//! Damaged layers for `overlayer prop --mode damaged`: a generated stack
//! with one layer compressed (gzip, or zstd with its content checksum) and
//! one byte of the compressed stream flipped, or the stream cut short.
//!
//! RFC 1952 (gzip: CRC-32 and ISIZE in the trailer) and RFC 8878 (zstd:
//! the frame's content checksum) make such damage detectable wherever it
//! falls, so the property is: the stack is refused, under a named rule, at
//! the damaged layer (or the model's own refusal of a layer below it comes
//! first), or the damage changed nothing the format covers (a gzip
//! header's mtime, say) and the outcome is the intact stack's. Whatever
//! happens, nothing is left behind on a refusal (the oracle's sentinels).

use proptest::prelude::*;

use crate::case::{apply_transform, ExpectedError, TarEntry, Transform, TransformOp};
use crate::kernel::Outcome;
use crate::replay::matches_error;

/// Where the damage falls: which layer (modulo the stack's height), which
/// byte (a fraction of the compressed layer's length), which compression,
/// and whether the stream is cut there instead of the byte flipped.
#[derive(Debug, Clone, Copy)]
pub struct Damage {
    pub layer_pick: usize,
    pub at_fraction: u32,
    pub zstd: bool,
    pub cut: bool,
}

pub fn damage() -> impl Strategy<Value = Damage> {
    (
        any::<usize>(),
        any::<u32>(),
        prop::bool::weighted(0.25),
        prop::bool::weighted(0.25),
    )
        .prop_map(|(layer_pick, at_fraction, zstd, cut)| Damage {
            layer_pick,
            at_fraction,
            zstd,
            cut,
        })
}

impl Damage {
    /// The damaged layer of a stack of `layers`.
    pub fn layer(self, layers: usize) -> usize {
        self.layer_pick % layers.max(1)
    }

    /// The case transforms that make the damage to `tar`, the damaged
    /// layer: its compression, then the flip at a byte of the result, or
    /// the cut there (keeping at least one byte: an empty file is an empty
    /// layer, not a damaged one).
    pub fn transforms(self, layer: usize, tar: &[u8]) -> anyhow::Result<Vec<Transform>> {
        let compress = if self.zstd {
            TransformOp::Zstd
        } else {
            TransformOp::Gzip
        };
        let mut compressed = tar.to_vec();
        apply_transform(&mut compressed, &compress)?;
        let at = ((u64::from(self.at_fraction) * compressed.len() as u64) >> 32) as usize;
        let damage = if self.cut {
            TransformOp::Truncate { at: at.max(1) }
        } else {
            TransformOp::FlipByte { at: at as i64 }
        };
        Ok(vec![
            Transform {
                layer,
                op: compress,
            },
            Transform { layer, op: damage },
        ])
    }
}

/// Applies `transforms` to the built `tars`.
pub fn damaged(tars: &[Vec<u8>], transforms: &[Transform]) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = tars.to_vec();
    for t in transforms {
        apply_transform(&mut out[t.layer], &t.op)?;
    }
    Ok(out)
}

/// Judges one side's outcome of the damaged stack against the model's
/// outcome of the intact one (`intact`), the layer at `layer` damaged.
pub fn judge(
    side: &str,
    layer: usize,
    intact: &Result<overlayer::tree::View, ExpectedError>,
    got: &Outcome,
    kernel: bool,
) -> Result<(), String> {
    let refused_below = matches!(intact, Err(want) if want.layer < layer);
    match (intact, got) {
        // The model refuses a layer below the damage: that refusal, exactly.
        (Err(want), Err(e)) if refused_below => {
            if matches_error(want, e) {
                Ok(())
            } else {
                Err(format!(
                    "model refuses layer {} below the damaged layer {layer} with {}; {side}: {e}",
                    want.layer, want.rule
                ))
            }
        }
        (_, Err(e)) => match (e.rule(), e.location()) {
            (Some(_), Some((at, _))) if at == layer => Ok(()),
            // Damage the format does not cover, and the model's refusal above it.
            _ if matches!(intact, Err(want) if matches_error(want, e)) => Ok(()),
            _ => Err(format!(
                "layer {layer} damaged; {side} fails otherwise: {e}"
            )),
        },
        (Ok(want), Ok(view)) => match crate::prop::differences(want, view, kernel) {
            None => Ok(()),
            Some(shown) => Err(format!(
                "layer {layer} damaged, {side} accepted it with another view: {shown}"
            )),
        },
        (Err(want), Ok(_)) => Err(format!(
            "layer {layer} damaged and the model refuses layer {} with {}; {side} succeeded",
            want.layer, want.rule
        )),
    }
}

/// What a saved failing case of a damaged stack expects: the model's
/// refusal of a layer below the damage, or else a corrupt archive at it.
pub fn expected(layers: &[Vec<TarEntry>], layer: usize) -> ExpectedError {
    match crate::model::run(layers) {
        Err(want) if want.layer < layer => want,
        _ => ExpectedError {
            layer,
            entry: "*".into(),
            rule: overlayer::Rule::CorruptArchive.code().into(),
        },
    }
}
