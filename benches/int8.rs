//! lookout's int8 layer (quantize + product + epilogue) at the shapes of
//! Data2Vec-Vision large, on 1 and 2 threads: GMAC/s per layer shape and
//! the time the model's 145 layers would take at that rate, which is the
//! floor BENCHMARKS.md compares the whole model with.
//!
//! cargo bench --bench int8

fn main() {
    // `cargo test --all-targets` runs this unoptimized: only `cargo bench`
    // (which passes --bench) measures.
    if !std::env::args().any(|a| a == "--bench") {
        println!("int8 bench: skipped (run it with cargo bench)");
        return;
    }
    // ViT-L/16 at 224x224: 197 tokens; per block q, k, v and the output
    // projection (1024 -> 1024), the MLP (1024 -> 4096 -> 1024).
    let shapes = [("q/k/v, output projection", 1024, 1024, 4), ("MLP in", 1024, 4096, 1), ("MLP out", 4096, 1024, 1)];
    for threads in [1, 2] {
        let mut model_s = 0.0;
        for (name, k, n, per_block) in shapes {
            let Some((kernel, s)) = lookout::model::bench_layer(197, k, n, threads, 31) else {
                println!("no lookout int8 kernel on this CPU");
                return;
            };
            let gmacs = (197 * k * n) as f64 / s / 1e9;
            println!("{kernel} {threads} thread(s) {name:<26} 197x{k}x{n}: {:>7.3} ms, {gmacs:>6.0} GMAC/s", s * 1e3);
            model_s += s * (24 * per_block) as f64;
        }
        println!("{threads} thread(s): the large model's 144 encoder layers at these rates: {:.1} ms", model_s * 1e3);
    }
}
