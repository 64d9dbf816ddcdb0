package dev.mobilec.core;

import java.util.regex.Pattern;

/**
 * The benchmark request as the adb driver sends it:
 * {@code am start -W -n dev.mobilec.demo/.BenchmarkActivity --es model PATH --ei iters N
 * --ei warmup W --ei threads T --es out results.json}.
 *
 * <pre>{@code
 * BenchmarkConfig cfg = new BenchmarkConfig("/data/local/tmp/m.pte", 50, 5, 1, "results.json");
 * String problem = cfg.problem();   // null when valid
 * }</pre>
 */
public final class BenchmarkConfig {
  public static final int DEFAULT_ITERS = 50;
  public static final int DEFAULT_WARMUP = 5;
  public static final int DEFAULT_THREADS = 1;
  public static final String DEFAULT_OUT = "results.json";
  public static final int MAX_ITERS = 1_000_000;

  private static final Pattern OUT_NAME = Pattern.compile("[A-Za-z0-9_][A-Za-z0-9._-]{0,127}");

  public final String model; // may be null when the extra is missing
  public final int iters;
  public final int warmup;
  public final int threads;
  public final String out;

  public BenchmarkConfig(String model, int iters, int warmup, int threads, String out) {
    this.model = model;
    this.iters = iters;
    this.warmup = warmup;
    this.threads = threads;
    this.out = out;
  }

  /** True when {@code out} is a plain file name that stays inside the app's files dir. */
  public static boolean isSafeOutName(String out) {
    return out != null && OUT_NAME.matcher(out).matches() && !out.contains("..");
  }

  /** A one-line description of what is wrong with the request, or null when it is valid. */
  public String problem() {
    if (model == null || model.trim().isEmpty()) {
      return "no model given: pass --es model /data/local/tmp/MODEL.pte (or .tflite)";
    }
    if (iters < 1 || iters > MAX_ITERS) return "iters must be in 1.." + MAX_ITERS + ", got " + iters;
    if (warmup < 0 || warmup > MAX_ITERS) return "warmup must be in 0.." + MAX_ITERS + ", got " + warmup;
    if (threads < 1 || threads > 64) return "threads must be in 1..64, got " + threads;
    try {
      RuntimeKind.fromFileName(model);
    } catch (IllegalArgumentException e) {
      return e.getMessage();
    }
    return null;
  }

  /** The runtime id for the result JSON, or null when the suffix is not one the app runs. */
  public String runtimeIdOrNull() {
    if (model == null) return null;
    try {
      return RuntimeKind.fromFileName(model).id;
    } catch (IllegalArgumentException e) {
      return null;
    }
  }
}
