//! The default metric scanner on real training-log formats: files under `tests/fixtures/`,
//! written from the printing code of each tool (PyTorch's MNIST example, Keras 2 and 3 `fit`,
//! the Hugging Face Trainer, PyTorch Lightning, fairseq, a JSON-lines and a Lightning CSV file),
//! and exactly which numbers the kid reads from each.

use nerokid::metrics::{jsonl_row, CsvMetrics, Extractor, Found, StreamScanner, BAR_PERIOD, QUIET};
use std::time::{Duration, Instant};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What the kid reads from one stream that printed the fixture in one go.
fn scan(name: &str) -> Vec<String> {
    let ex = Extractor::new(true, &[]).unwrap();
    let mut scanner = StreamScanner::new();
    let mut out = Vec::new();
    scanner.feed(&ex, &fixture(name), Instant::now(), &mut out);
    scanner.finish(&ex, &mut out);
    show(&out)
}

/// One found line as text: `step | name=value name=value` (`-` for no step).
fn show(found: &[Found]) -> Vec<String> {
    found
        .iter()
        .map(|f| {
            let values: Vec<String> = f.values.iter().map(|(n, v)| format!("{n}={v}")).collect();
            let step = f.step.map_or("-".into(), |s| s.to_string());
            format!("{step} | {}", values.join(" "))
        })
        .collect()
}

/// PyTorch's examples/mnist: `Loss:` on training lines (the epoch is the step), `Average loss:`
/// on test lines; `Accuracy: 9846/10000 (98%)` is not a number.
#[test]
fn pytorch_mnist_example() {
    let mut want = Vec::new();
    for (epoch, losses, test) in [
        (
            1,
            [
                "2.300875", "1.723524", "0.860132", "0.568263", "0.429981", "0.245671",
            ],
            "0.0479",
        ),
        (
            2,
            [
                "0.068353", "0.102987", "0.043715", "0.125013", "0.031285", "0.024592",
            ],
            "0.0328",
        ),
    ] {
        for l in losses {
            want.push(format!("{epoch} | Epoch={epoch} Loss={l}"));
        }
        want.push(format!("- | loss={test}"));
    }
    assert_eq!(scan("pytorch_mnist.log"), want);
}

/// Regression: Keras' interactive bar (`\b`s, `\r`, redrawn) gave nothing until the epoch's
/// final newline. Read in one go, the last drawing before each epoch's end and the end itself.
#[test]
fn keras_2_fit_interactive_and_verbose_2() {
    assert_eq!(
        scan("keras2_fit.log"),
        [
            "- | loss=0.4012 accuracy=0.8819",
            "- | loss=0.2952 accuracy=0.915 val_loss=0.14 val_accuracy=0.9583",
            "- | loss=0.139 accuracy=0.9587",
            "- | loss=0.1401 accuracy=0.9585 val_loss=0.1021 val_accuracy=0.9688",
        ]
    );
    assert_eq!(
        scan("keras2_fit_verbose2.log"),
        [
            "- | loss=0.2952 accuracy=0.915 val_loss=0.14 val_accuracy=0.9583",
            "- | loss=0.1401 accuracy=0.9585 val_loss=0.1021 val_accuracy=0.9688",
        ]
    );
}

#[test]
fn keras_3_fit_interactive_and_verbose_2() {
    assert_eq!(
        scan("keras3_fit.log"),
        [
            "- | accuracy=0.8751 loss=0.4312",
            "- | accuracy=0.8766 loss=0.4284 val_accuracy=0.9578 val_loss=0.1405",
            "- | accuracy=0.9592 loss=0.1377",
            "- | accuracy=0.9593 loss=0.1376 val_accuracy=0.9674 val_loss=0.1069",
        ]
    );
    assert_eq!(
        scan("keras3_fit_verbose2.log"),
        [
            "- | accuracy=0.8766 loss=0.4284 val_accuracy=0.9578 val_loss=0.1405",
            "- | accuracy=0.9593 loss=0.1376 val_accuracy=0.9674 val_loss=0.1069",
        ]
    );
}

/// The Trainer's log dicts (the epoch is the step) and its final metrics block; not the
/// `TrainingArguments(` printed one field per line, the `Num examples = 3,668` settings, nor
/// `n_gpu: 1` / `Process rank: 0`.
#[test]
fn hugging_face_trainer() {
    assert_eq!(
        scan("hf_trainer.log"),
        [
            "1.09 | loss=0.5612 grad_norm=7.831462860107422 learning_rate=0.000012737835875090777 epoch=1.09",
            "2.18 | loss=0.3286 grad_norm=0.7126498818397522 learning_rate=0.000005475671750181554 epoch=2.18",
            "3 | train_runtime=305.1 train_samples_per_second=36.07 train_steps_per_second=4.513 train_loss=0.3719 epoch=3",
            "3 | epoch=3",
            "- | train_loss=0.3719",
            "- | train_samples=3668",
            "- | train_samples_per_second=36.067",
            "- | train_steps_per_second=4.513",
        ]
    );
}

/// Regression: Lightning's preamble gave `using=0` and `LOCAL_RANK=0`, `[rank: 0]` gave `rank`,
/// and every bar gave `v_num=0`; its `\r` bars gave nothing until the last newline.
#[test]
fn pytorch_lightning_fit() {
    assert_eq!(
        scan("lightning_fit.log"),
        [
            "- | train_loss=0.412",
            "- | train_loss=0.0915",
            "- | train_loss=0.0533 val_loss=0.0712 val_acc=0.978",
            "- | train_loss=0.0498 val_loss=0.0712 val_acc=0.978",
            "- | train_loss=0.0498 val_loss=0.0521 val_acc=0.983",
        ]
    );
}

/// fairseq's `train_inner` tokens, its `| epoch 001 | loss 9.876 |` summaries and its JSON log
/// (numbers as strings); not the `Namespace(...)` of its arguments nor `39,469,056` params.
#[test]
fn fairseq_simple_and_json_logs() {
    assert_eq!(
        scan("fairseq_train.log"),
        [
            "- | loss=13.802 nll_loss=13.745 ppl=13732.9 wps=12345.6 ups=2.31 wpb=5342.1 bsz=142.3 num_updates=100 lr=0.0000125 gnorm=2.345 loss_scale=128 train_wall=44 gb_free=10.2 wall=46",
            "1 | epoch=1 loss=9.876 nll_loss=9.512 ppl=730.12 wps=34567.8 wpb=5000.2 bsz=140.1 num_updates=1102",
            "1 | epoch=1 loss=11.234 nll_loss=10.987 ppl=2030.1 wps=12000.5 ups=2.25 wpb=5340 bsz=142 num_updates=1102 lr=0.000137 gnorm=1.9 train_wall=480 wall=490",
        ]
    );
    assert_eq!(
        scan("fairseq_train_json.log"),
        [
            "1 | epoch=1 update=0.091 loss=13.802 nll_loss=13.745 ppl=13732.9 wps=12345.6 num_updates=100 lr=0.0000125 gnorm=2.345 wall=46",
            "1 | epoch=1 valid_loss=9.876 valid_nll_loss=9.512 valid_ppl=730.12 valid_num_updates=1102",
        ]
    );
}

#[test]
fn json_lines_metrics_file() {
    let text = String::from_utf8(fixture("metrics.jsonl")).unwrap();
    let rows: Vec<Found> = text.lines().filter_map(jsonl_row).collect();
    assert_eq!(
        show(&rows),
        [
            "100 | loss=2.3012 lr=0.001 step=100",
            "200 | loss=1.8831 lr=0.001 step=200",
            "200 | step=200 val_acc=0.4121 val_loss=1.9544",
            "300 | loss=NaN lr=0.001 step=300",
        ]
    );
}

/// Regression: the CSV reader split `"a,b"` at its comma. Lightning's `CSVLogger` leaves the cells
/// of metrics not logged at a step empty; a half-written last line waits for its end.
#[test]
fn lightning_csv_logger_file() {
    let mut csv = CsvMetrics::default();
    let mut out = Vec::new();
    let bytes = fixture("lightning_metrics.csv");
    let (head, tail) = bytes.split_at(bytes.len() - 10);
    csv.feed(head, &mut out);
    assert_eq!(
        show(&out),
        [
            "49 | epoch=0 step=49 train_loss=0.5123",
            "99 | epoch=0 step=99 train_loss=0.3311",
            "937 | epoch=0 step=937 val_acc=0.978 val_loss=0.0712",
            "987 | epoch=1 step=987 train_loss=0.0804",
        ],
        "the last row is half written"
    );
    csv.feed(tail, &mut out);
    assert_eq!(
        show(&out[4..]),
        ["1875 | epoch=1 step=1875 val_acc=0.983 val_loss=0.0521"]
    );
    let mut quoted = CsvMetrics::default();
    let mut out = Vec::new();
    quoted.feed(
        b"step,tags,loss,\"val,acc\"\n3,\"a,b\",0.5,0.75\n4,\"multi\nline\",0.25,",
        &mut out,
    );
    quoted.feed(b"0.8\n", &mut out);
    assert_eq!(
        show(&out),
        [
            "3 | step=3 loss=0.5 val,acc=0.75",
            "4 | step=4 loss=0.25 val,acc=0.8"
        ]
    );
}

/// A bar redrawn 50 times a second for 10 s: its numbers reach the log about once per
/// `BAR_PERIOD` (the latest each time), the same numbers never twice in a row, and the final
/// newline does not repeat the last drawing.
#[test]
fn a_fast_bar_is_thinned_to_its_latest_numbers() {
    let ex = Extractor::new(true, &[]).unwrap();
    let mut scanner = StreamScanner::new();
    let start = Instant::now();
    let mut out = Vec::new();
    for i in 0..500u32 {
        let now = start + Duration::from_millis(20 * u64::from(i));
        // The loss changes every 10th batch, as a smoothed loss in a postfix does.
        let chunk = format!("\rEpoch 0: {:3}%| {i}/500 [loss={}]", i / 5, i / 10);
        scanner.feed(&ex, chunk.as_bytes(), now, &mut out);
        if let Some(due) = scanner.due() {
            assert!(due <= now + BAR_PERIOD);
        }
        scanner.tick(&ex, now + Duration::from_millis(19), &mut out);
    }
    scanner.feed(&ex, b"\n", start + Duration::from_secs(10), &mut out);
    scanner.finish(&ex, &mut out);
    let losses: Vec<f64> = out.iter().map(|f| f.values[0].1).collect();
    assert!(
        (10..=12).contains(&losses.len()),
        "{} writes: {losses:?}",
        losses.len()
    );
    assert!(losses.windows(2).all(|w| w[0] != w[1]), "{losses:?}");
    assert_eq!(losses.first(), Some(&0.0));
    assert_eq!(losses.last(), Some(&49.0), "the final numbers are written");

    // Identical redraws: written once.
    let mut scanner = StreamScanner::new();
    let mut out = Vec::new();
    for i in 0..200u64 {
        let now = start + Duration::from_millis(20 * i);
        scanner.feed(&ex, b"\r 50%| v_num=0, loss=0.5", now, &mut out);
    }
    scanner.feed(&ex, b"\n", start + Duration::from_secs(5), &mut out);
    scanner.finish(&ex, &mut out);
    assert_eq!(show(&out), ["- | loss=0.5"]);
}

/// A slow bar (one drawing per long batch, no later drawing to end it): its numbers are read
/// once the stream has been quiet for `QUIET`, not when the next batch redraws it.
#[test]
fn a_slow_bar_is_read_when_the_stream_goes_quiet() {
    let ex = Extractor::new(true, &[]).unwrap();
    let mut scanner = StreamScanner::new();
    let start = Instant::now();
    let mut out = Vec::new();
    scanner.feed(
        &ex,
        b"\r  1/50 [====>] - ETA: 9:59 - loss: 2.5",
        start,
        &mut out,
    );
    assert!(out.is_empty(), "a drawing may still be half written");
    assert_eq!(scanner.due(), Some(start + QUIET));
    scanner.tick(&ex, start + QUIET, &mut out);
    assert_eq!(show(&out), ["- | loss=2.5"]);
    assert_eq!(scanner.due(), None);
}
