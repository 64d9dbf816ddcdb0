package dev.mobilec.core;

import java.util.LinkedHashMap;
import java.util.Map;

/**
 * What the benchmark activity writes to {@code files/<out>}, in exactly this schema:
 *
 * <pre>
 * {"runtime": "executorch"|"tflite", "model": PATH, "latencies_ms": [...], "load_ms": x,
 *  "first_run_ms": x, "peak_memory_kb": x, "threads": T, "timed_window_ms": [t0, t1],
 *  "error": null | "message"}
 * </pre>
 *
 * <p>{@code timed_window_ms} is SystemClock.elapsedRealtime() just before the first and just after
 * the last timed inference: the adb profiler uses it to keep only the energy samples of the timed
 * runs. On failure {@code error} holds the message, {@code latencies_ms} is empty and timings not
 * reached are null. {@code runtime} is null only when the model path has an unsupported suffix.
 */
public final class BenchmarkResult {
  public final String runtime;
  public final String model;
  public final double[] latenciesMs;
  public final Double loadMs;
  public final Double firstRunMs;
  public final Long peakMemoryKb;
  public final int threads;
  public final double[] timedWindowMs; // null when the timed runs did not complete
  public final String error;

  public BenchmarkResult(
      String runtime,
      String model,
      double[] latenciesMs,
      Double loadMs,
      Double firstRunMs,
      Long peakMemoryKb,
      int threads,
      double[] timedWindowMs,
      String error) {
    this.runtime = runtime;
    this.model = model;
    this.latenciesMs = latenciesMs.clone();
    this.loadMs = loadMs;
    this.firstRunMs = firstRunMs;
    this.peakMemoryKb = peakMemoryKb;
    this.threads = threads;
    this.timedWindowMs = timedWindowMs == null ? null : timedWindowMs.clone();
    this.error = error;
  }

  /** A failed run: nothing measured beyond what is given. */
  public static BenchmarkResult failure(BenchmarkConfig cfg, String message) {
    return new BenchmarkResult(
        cfg.runtimeIdOrNull(), cfg.model, new double[0], null, null, null, cfg.threads, null, message);
  }

  public boolean ok() {
    return error == null;
  }

  /** Ordered map with the schema's keys, in the schema's order. */
  public Map<String, Object> toMap() {
    Map<String, Object> m = new LinkedHashMap<>();
    m.put("runtime", runtime);
    m.put("model", model);
    m.put("latencies_ms", latenciesMs);
    m.put("load_ms", loadMs);
    m.put("first_run_ms", firstRunMs);
    m.put("peak_memory_kb", peakMemoryKb);
    m.put("threads", threads);
    m.put("timed_window_ms", timedWindowMs);
    m.put("error", error);
    return m;
  }

  /** The JSON text written to the results file (pretty-printed, newline-terminated). */
  public String toJson() {
    return Json.writePretty(toMap(), 2);
  }
}
