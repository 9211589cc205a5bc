//! Incremental decoding with the decoder attention layer and a paged KV
//! cache: a prompt for each of two sequences in one call, then one token per
//! step, the second sequence forked from the first halfway (copy on write).
//!
//!     cargo run --example decode
use attn::{Context, DecoderConfig, DecoderLayer, KvCache, RopeOptions, View, ViewMut, Weight};

const E: usize = 64; // model width
const HQ: usize = 8; // query heads
const HKV: usize = 2; // key/value heads (grouped-query)
const D: usize = E / HQ;

fn main() -> Result<(), attn::Error> {
    println!("libattn {} ({})", attn::version_string(), attn::cpu_info());
    let ctx = Context::with_threads(2)?;
    let mut layer = DecoderLayer::new(
        &ctx,
        &DecoderConfig {
            embed_dim: E,
            num_heads: HQ,
            num_kv_heads: HKV,
            rope: Some(RopeOptions { theta: 10000.0, ..Default::default() }),
            ..Default::default()
        },
    )?;
    // Deterministic stand-ins for a checkpoint's q_proj/k_proj/v_proj/o_proj.
    let mut seed = 1u32;
    let mut weight = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.25
            })
            .collect()
    };
    for (which, rows) in [(Weight::Q, HQ * D), (Weight::K, HKV * D), (Weight::V, HKV * D)] {
        layer.set_weight(which, &View::new(&weight(rows * E), &[rows, E])?)?;
    }
    layer.set_weight(Weight::O, &View::new(&weight(E * HQ * D), &[E, HQ * D])?)?;

    // Two sequences, blocks of 16 tokens from a pool of 8.
    let (batch, prompt, steps) = (2, 12, 20);
    let mut cache = KvCache::paged(&ctx, batch, HKV, D, 0, 16, 8)?;

    // Prefill: both prompts at once, sequence 1's only 5 tokens long.
    let x = weight(batch * prompt * E);
    let mut y = vec![0f32; batch * prompt * E];
    layer.forward(
        &mut cache,
        &View::new(&x, &[batch, prompt, E])?,
        &mut ViewMut::new(&mut y, &[batch, prompt, E])?,
        Some(&[prompt as i64, 5]),
    )?;
    println!("prefill: lengths {:?}, free blocks {}", cache.lens()?, cache.info()?.free_blocks);

    // Decode: each step feeds back the last output of each sequence.
    let mut last: Vec<f32> = (0..batch)
        .flat_map(|b| {
            let n = if b == 0 { prompt } else { 5 };
            y[(b * prompt + n - 1) * E..][..E].to_vec()
        })
        .collect();
    for step in 0..steps {
        if step == steps / 2 {
            cache.copy_seq(1, 0)?; // fork: sequence 1 continues from sequence 0
            last.copy_within(0..E, E);
            println!(
                "step {}: forked sequence 0 into 1, free blocks {}",
                step,
                cache.info()?.free_blocks
            );
        }
        let mut out = vec![0f32; batch * E];
        layer.forward(
            &mut cache,
            &View::new(&last, &[batch, 1, E])?,
            &mut ViewMut::new(&mut out, &[batch, 1, E])?,
            None,
        )?;
        // Normalise, so the fed-back activations stay in range.
        for row in out.chunks_mut(E) {
            let n = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-6);
            row.iter_mut().for_each(|v| *v /= n);
        }
        if step % 5 == 4 {
            println!("step {:2}: lengths {:?}, y[0][..4] = {:?}", step, cache.lens()?, &out[..4]);
        }
        last = out;
    }
    let info = cache.info()?;
    println!(
        "done: lengths {:?}, {} of {} blocks free",
        cache.lens()?,
        info.free_blocks,
        info.num_blocks
    );
    Ok(())
}
