package dev.mobilec.demo

import android.app.Activity
import android.graphics.Bitmap
import android.os.Bundle
import android.os.SystemClock
import android.widget.ImageView
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.TextView
import dev.mobilec.core.BenchmarkRunner
import dev.mobilec.core.LatencyStats
import dev.mobilec.core.ModelMetadata
import dev.mobilec.core.Postprocessing
import dev.mobilec.core.TensorData
import dev.mobilec.core.Task

/**
 * Loads the bundled model (or `--es model /data/local/tmp/x.pte`), runs it on the bundled sample,
 * and shows the prediction, the true label, the host runtime's prediction and the latency.
 * For a recommender it scores the sample user (`--el user N` picks another) and lists the top-K.
 */
class MainActivity : Activity() {
    private lateinit var image: ImageView
    private lateinit var report: TextView

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        image = ImageView(this).apply { adjustViewBounds = true }
        report = TextView(this).apply {
            textSize = 16f
            setTextIsSelectable(true)
            text = "Loading…"
        }
        val column = LinearLayout(this).apply {
            orientation = LinearLayout.VERTICAL
            setPadding(40, 40, 40, 40)
            addView(image)
            addView(report)
        }
        setContentView(ScrollView(this).apply {
            fitsSystemWindows = true
            addView(column)
        })

        val modelExtra = intent.getStringExtra("model")
        val threads = intent.getIntExtra("threads", 1).coerceIn(1, 64)
        val userExtra = if (intent.hasExtra("user")) intent.getLongExtra("user", 0L) else null
        Thread({
            val text = try {
                runDemo(modelExtra, threads, userExtra)
            } catch (t: Throwable) {
                "Error: ${BenchmarkRunner.describe(t)}"
            }
            runOnUiThread { report.text = text }
        }, "mobilec-demo").start()
    }

    private fun runDemo(modelExtra: String?, threads: Int, userExtra: Long?): String {
        val bundled = BundleAssets.readMetadata(this)
        val file = when {
            modelExtra != null -> BundleAssets.resolveModel(this, modelExtra, bundled)
            bundled != null -> BundleAssets.bundledModelFile(this, bundled)
            else -> return "No model is bundled.\n\nOn your computer run\n" +
                "  mobilec android bundle RUN/model.pte\n" +
                "then rebuild and install the app (./gradlew installDebug)."
        }
        val described = BundleAssets.metadataFor(file, bundled)
            ?: return "No metadata describes ${file.name}: push the ${ModelMetadata.ASSET_NAME} that " +
                "`mobilec android bundle` wrote for it into the same folder."
        val meta = described.meta

        val t0 = SystemClock.elapsedRealtimeNanos()
        openEngine(file, threads, meta.inputQuant, meta.outputQuant).use { engine ->
            val loadMs = ms(SystemClock.elapsedRealtimeNanos() - t0)
            val header = buildString {
                appendLine("Model: ${file.name} (${engine.runtime.id}, $threads thread${if (threads == 1) "" else "s"})")
                meta.recipe?.let { appendLine("Recipe: $it") }
                meta.dataset?.let { appendLine("Data: $it") }
                appendLine("Load: %.1f ms".format(loadMs))
            }
            return header + when (meta.task) {
                Task.CLASSIFICATION -> classify(engine, described)
                Task.RECOMMENDATION -> recommend(engine, meta, userExtra ?: meta.sampleUserId)
            }
        }
    }

    private fun classify(engine: Engine, described: BundleAssets.Described): String {
        val meta = described.meta
        val bitmap = BundleAssets.sampleBitmap(this, described)
        runOnUiThread { image.setImageBitmap(Bitmap.createScaledBitmap(bitmap, 560, 560 * bitmap.height / bitmap.width, false)) }
        val input = BundleAssets.imageInput(bitmap, meta)
        val (outputs, latency) = timed(engine, input, meta.inputDtype)
        val top = Postprocessing.classify(outputs.first().floats(), meta.labels, 5)
        val best = top.first()
        return buildString {
            appendLine()
            appendLine("Prediction: ${best.label} (%.1f %%)".format(best.probability * 100))
            if (meta.sampleTrueLabel >= 0) {
                val ok = if (best.index == meta.sampleTrueLabel) "correct" else "wrong"
                appendLine("True label: ${meta.label(meta.sampleTrueLabel)} ($ok)")
            }
            val agree = if (best.index == meta.expectedTop1) "agrees" else "DISAGREES"
            appendLine("Host runtime said: ${meta.label(meta.expectedTop1)} — phone $agree")
            appendLine()
            appendLine("Top 5:")
            top.forEach { appendLine("  %-14s %6.2f %%".format(it.label, it.probability * 100)) }
            appendLine()
            append(latency)
        }
    }

    private fun recommend(engine: Engine, meta: ModelMetadata, user: Long): String {
        val n = TensorData.numel(meta.inputShape).toInt()
        val input = TensorData.ofLongs(LongArray(n) { user }, meta.inputShape)
        val (outputs, latency) = timed(engine, input, meta.inputDtype)
        val ranking = Postprocessing.recommend(outputs, meta.recommendationOutput, meta.topK)
        return buildString {
            appendLine()
            appendLine("Top ${ranking.items.size} items for user $user:")
            for (i in ranking.items.indices) {
                val name = meta.labels.getOrNull(ranking.items[i].toInt())?.let { " $it" } ?: ""
                appendLine("  %2d. item %d%s  score %.4f".format(i + 1, ranking.items[i], name, ranking.scores[i]))
            }
            if (user == meta.sampleUserId) {
                val same = ranking.items.contentEquals(meta.expectedItems)
                appendLine("Host runtime's top items: ${meta.expectedItems.joinToString()} — ${if (same) "same" else "DIFFERENT"}")
            }
            appendLine()
            append(latency)
        }
    }

    /** First run, then 10 more; reports both so the one-time cost is visible. */
    private fun timed(engine: Engine, input: TensorData, dtype: String): Pair<List<TensorData>, String> {
        val t0 = SystemClock.elapsedRealtimeNanos()
        val outputs = engine.run(input, dtype)
        val first = ms(SystemClock.elapsedRealtimeNanos() - t0)
        val runs = DoubleArray(10) {
            val s = SystemClock.elapsedRealtimeNanos()
            engine.run(input, dtype)
            ms(SystemClock.elapsedRealtimeNanos() - s)
        }
        val stats = LatencyStats.of(runs)
        return outputs to "Latency: first run %.2f ms, then p50 %.2f ms (min %.2f, max %.2f) over %d runs".format(
            first, stats.p50, stats.min, stats.max, stats.count,
        )
    }

    private fun ms(nanos: Long) = nanos / 1e6
}
