//! lookout's int8 layer (quantize + product + epilogue) at the shapes of
//! Data2Vec-Vision large, on 1 and 2 threads, with every int8 kernel this
//! CPU runs side by side: GMAC/s per layer shape, the ratio to the best
//! kernel (the one a model gets), and the time the model's 144 encoder
//! layers would take at that rate. First, the ceiling: a bare loop of each
//! int8 instruction on one thread.
//!
//! cargo bench --bench int8 [-- KERNEL...]   (parts of kernel names)

fn main() {
    // `cargo test --all-targets` runs this unoptimized: only `cargo bench`
    // (which passes --bench) measures.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("int8 bench: skipped (run it with cargo bench)");
        return;
    }
    let wanted: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let kernels: Vec<&str> = lookout::model::int8_kernels()
        .into_iter()
        .filter(|k| wanted.is_empty() || wanted.iter().any(|w| k.contains(w.as_str())))
        .collect();
    if kernels.is_empty() {
        println!("no lookout int8 kernel on this CPU (or none named {wanted:?})");
        return;
    }
    for (instruction, gmacs) in lookout::model::int8_peaks() {
        println!("peak, bare {instruction} loop, 1 thread: {gmacs:.0} GMAC/s");
    }
    // ViT-L/16 at 224x224: 197 tokens; per block q, k, v and the output
    // projection (1024 -> 1024), the MLP (1024 -> 4096 -> 1024).
    let shapes = [("q/k/v, output projection", 1024, 1024, 4), ("MLP in", 1024, 4096, 1), ("MLP out", 4096, 1024, 1)];
    for threads in [1, 2] {
        let mut model_s = vec![0.0; kernels.len()];
        for (name, k, n, per_block) in shapes {
            let mut first = None;
            for (kernel, model_s) in kernels.iter().zip(&mut model_s) {
                let s = lookout::model::bench_layer(kernel, 197, k, n, threads, 31);
                let gmacs = (197 * k * n) as f64 / s / 1e9;
                let ratio = s / *first.get_or_insert(s);
                println!(
                    "{kernel:<30} {threads} thread(s) {name:<26} 197x{k}x{n}: {:>7.3} ms, {gmacs:>6.0} GMAC/s, {ratio:.2}x",
                    s * 1e3
                );
                *model_s += s * (24 * per_block) as f64;
            }
        }
        for (kernel, s) in kernels.iter().zip(&model_s) {
            println!("{kernel:<30} {threads} thread(s): the large model's 144 encoder layers: {:.1} ms", s * 1e3);
        }
    }
}
