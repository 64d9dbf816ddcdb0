package dev.mobilec.demo

import android.app.Activity
import android.os.Bundle
import android.os.SystemClock
import android.util.Log
import android.widget.TextView
import dev.mobilec.core.BenchmarkConfig
import dev.mobilec.core.BenchmarkInputs
import dev.mobilec.core.BenchmarkResult
import dev.mobilec.core.BenchmarkRunner
import dev.mobilec.core.InputSpec
import dev.mobilec.core.LatencyStats
import dev.mobilec.core.ModelInspector
import dev.mobilec.core.ProcStatus
import dev.mobilec.core.QuantParams
import dev.mobilec.core.Task
import dev.mobilec.core.TensorData
import java.io.File
import java.util.concurrent.Executors

/**
 * Benchmarks one model, driven over adb (see mobilec/profile/adb.py):
 *
 * ```
 * adb shell am start -S -W -n dev.mobilec.demo/.BenchmarkActivity \
 *     --es model /data/local/tmp/model.pte --ei iters 50 --ei warmup 5 --ei threads 1 --es out results.json \
 *     [--es input /data/data/dev.mobilec.demo/files/mobilec/input.bin] [--es shape 1,1,28,28 --es dtype float32]
 * adb shell run-as dev.mobilec.demo cat files/results.json
 * ```
 *
 * Load (timed), one first inference (timed), `warmup` untimed runs, `iters` timed runs with
 * SystemClock.elapsedRealtimeNanos; the result (see [BenchmarkResult]) is written atomically to
 * `files/<out>`, then the activity finishes. Failures are written as `error`, never a crash.
 *
 * Input: `--es input` (raw little-endian float32 samples, cycled), else the bundled sample image
 * for the bundled classifier, else a fixed seeded random tensor. Its shape comes from `--es shape`,
 * else the metadata, else the model file itself ([ModelInspector]).
 */
class BenchmarkActivity : Activity() {

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        val status = TextView(this).apply {
            text = "mobilec benchmark running…"
            setPadding(32, 96, 32, 32)
        }
        setContentView(status)

        val extras = intent.extras
        val cfg = BenchmarkConfig(
            extras?.getString("model"),
            extras?.getInt("iters", BenchmarkConfig.DEFAULT_ITERS) ?: BenchmarkConfig.DEFAULT_ITERS,
            extras?.getInt("warmup", BenchmarkConfig.DEFAULT_WARMUP) ?: BenchmarkConfig.DEFAULT_WARMUP,
            extras?.getInt("threads", BenchmarkConfig.DEFAULT_THREADS) ?: BenchmarkConfig.DEFAULT_THREADS,
            extras?.getString("out") ?: BenchmarkConfig.DEFAULT_OUT,
        )
        val request = Request(cfg, extras?.getString("shape"), extras?.getString("dtype"), extras?.getString("input"))
        val appContext = applicationContext

        // One benchmark at a time per process: a second launch queues behind the first.
        EXECUTOR.execute {
            val safeOut = BenchmarkConfig.isSafeOutName(cfg.out)
            val result = if (safeOut) {
                runBenchmark(request)
            } else {
                BenchmarkResult.failure(cfg, "out must be a plain file name like results.json, got '${cfg.out}'")
            }
            val outName = if (safeOut) cfg.out else BenchmarkConfig.DEFAULT_OUT
            try {
                writeAtomically(File(appContext.filesDir, outName), result.toJson())
                Log.i(TAG, "wrote files/$outName: ${summary(result)}")
            } catch (t: Throwable) {
                Log.e(TAG, "cannot write files/$outName", t)
            }
            runOnUiThread {
                status.text = summary(result)
                finish()
            }
        }
    }

    private class Request(val cfg: BenchmarkConfig, val shape: String?, val dtype: String?, val input: String?)

    private class Prepared(
        val file: File,
        val spec: InputSpec,
        val inputs: List<TensorData>,
        val inputQuant: QuantParams?,
        val outputQuant: QuantParams?,
    )

    private fun runBenchmark(req: Request): BenchmarkResult {
        val cfg = req.cfg
        val problem = cfg.problem()
        if (problem != null) return BenchmarkResult.failure(cfg, problem)
        // Resolve the file and build the inputs before the clock starts: load_ms times only the runtime.
        val p = try {
            prepare(req)
        } catch (t: Throwable) {
            return BenchmarkResult.failure(cfg, BenchmarkRunner.describe(t))
        }
        return BenchmarkRunner.run(
            cfg,
            {
                val engine = openEngine(p.file, cfg.threads, p.inputQuant, p.outputQuant)
                val cycle = BenchmarkInputs.Cycle(p.inputs)
                object : BenchmarkRunner.Session {
                    override fun run() {
                        engine.run(cycle.next(), p.spec.dtype)
                    }

                    override fun close() = engine.close()
                }
            },
            { SystemClock.elapsedRealtimeNanos() },
            { ProcStatus.peakResidentKb(File("/proc/self/status").readText()) },
        )
    }

    private fun prepare(req: Request): Prepared {
        // a broken bundled metadata file must not stop the benchmark of a pushed model
        val bundled = runCatching { BundleAssets.readMetadata(this) }.getOrNull()
        val file = BundleAssets.resolveModel(this, req.cfg.model, bundled)
        val described = BundleAssets.metadataFor(file, bundled)
        val meta = described?.meta
        // the file's own description: throws for a missing, unreadable or malformed model file
        val inspected = ModelInspector.inspect(file)
        val spec = when {
            req.shape != null -> InputSpec.parse(req.shape, req.dtype)
            meta != null -> InputSpec.of(meta)
            else -> inspected.input
        }
        val inputs = if (req.input != null) {
            BenchmarkInputs.fromRawFloat32(File(req.input).readBytes(), spec)
        } else {
            listOf(defaultInput(spec, described))
        }
        return Prepared(file, spec, inputs, meta?.inputQuant ?: inspected.inputQuant, meta?.outputQuant ?: inspected.outputQuant)
    }

    /** The bundle's sample (image or user) when the metadata describes this model, else a seeded random tensor. */
    private fun defaultInput(spec: InputSpec, described: BundleAssets.Described?): TensorData {
        val meta = described?.meta
        if (meta == null || !spec.shape.contentEquals(meta.inputShape)) return spec.syntheticInput(0)
        return when (meta.task) {
            Task.CLASSIFICATION -> BundleAssets.imageInput(BundleAssets.sampleBitmap(this, described), meta)
            Task.RECOMMENDATION -> {
                val n = TensorData.numel(spec.shape).toInt()
                TensorData.ofLongs(LongArray(n) { meta.sampleUserId }, spec.shape)
            }
        }
    }

    private fun summary(r: BenchmarkResult): String =
        if (r.ok()) {
            val s = LatencyStats.of(r.latenciesMs)
            "%s %s: p50 %.3f ms (p10 %.3f, p90 %.3f) over %d runs, load %.1f ms, first %.3f ms, peak %s kB".format(
                r.runtime, File(r.model).name, s.p50, s.p10, s.p90, s.count, r.loadMs, r.firstRunMs, r.peakMemoryKb,
            )
        } else {
            "benchmark failed: ${r.error}"
        }

    companion object {
        private const val TAG = "mobilec"
        private val EXECUTOR = Executors.newSingleThreadExecutor { r -> Thread(r, "mobilec-benchmark") }

        /** Write to a temporary file, then rename: a reader never sees a half-written result. */
        fun writeAtomically(target: File, text: String) {
            val tmp = File(target.parentFile, ".${target.name}.part")
            tmp.writeText(text)
            if (!tmp.renameTo(target)) {
                tmp.delete()
                throw java.io.IOException("cannot rename $tmp to $target")
            }
        }
    }
}
