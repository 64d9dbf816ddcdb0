package dev.mobilec.core;

/**
 * The benchmark protocol, independent of the runtime: load (timed), one first inference (timed,
 * reported as {@code first_run_ms}, not in {@code latencies_ms}), {@code warmup} untimed runs,
 * then {@code iters} timed runs. Any failure, including native-library and out-of-memory errors,
 * becomes the result's {@code error} instead of an exception.
 *
 * <pre>{@code
 * BenchmarkResult r = BenchmarkRunner.run(cfg, () -> openSession(), SystemClock::elapsedRealtimeNanos,
 *     () -> ProcStatus.peakResidentKb(readProcStatus()));
 * }</pre>
 */
public final class BenchmarkRunner {
  private BenchmarkRunner() {}

  /** A loaded model with its input prepared; {@link #run} performs one inference. */
  public interface Session extends AutoCloseable {
    void run() throws Exception;

    @Override
    void close();
  }

  /** Loads the model and prepares its input. */
  public interface SessionLoader {
    Session load() throws Exception;
  }

  /** A monotonic clock in nanoseconds (SystemClock.elapsedRealtimeNanos on Android). */
  public interface Clock {
    long nanos();
  }

  /** Peak resident memory of the process in kB, or null when unknown. */
  public interface MemoryProbe {
    Long peakKb();
  }

  public static BenchmarkResult run(BenchmarkConfig cfg, SessionLoader loader, Clock clock, MemoryProbe memory) {
    String problem = cfg.problem();
    if (problem != null) return BenchmarkResult.failure(cfg, problem);
    Double loadMs = null;
    Double firstRunMs = null;
    Session session = null;
    try {
      long t0 = clock.nanos();
      session = loader.load();
      loadMs = ms(clock.nanos() - t0);
      long t1 = clock.nanos();
      session.run();
      firstRunMs = ms(clock.nanos() - t1);
      for (int i = 0; i < cfg.warmup; i++) session.run();
      double[] lat = new double[cfg.iters];
      long windowStart = clock.nanos();
      long end = windowStart;
      for (int i = 0; i < cfg.iters; i++) {
        long s = clock.nanos();
        session.run();
        end = clock.nanos();
        lat[i] = ms(end - s);
      }
      double[] window = {ms(windowStart), ms(end)};
      Long peak = safePeak(memory);
      return new BenchmarkResult(
          RuntimeKind.fromFileName(cfg.model).id, cfg.model, lat, loadMs, firstRunMs, peak, cfg.threads, window, null);
    } catch (Throwable t) { // native (UnsatisfiedLinkError), OOM and runtime errors alike
      return new BenchmarkResult(
          cfg.runtimeIdOrNull(), cfg.model, new double[0], loadMs, firstRunMs, safePeak(memory), cfg.threads, null,
          describe(t));
    } finally {
      if (session != null) {
        try {
          session.close();
        } catch (Throwable ignored) {
          // closing after a failure must not hide the first error
        }
      }
    }
  }

  static double ms(long nanos) {
    return nanos / 1e6;
  }

  private static Long safePeak(MemoryProbe memory) {
    try {
      return memory.peakKb();
    } catch (Throwable t) {
      return null;
    }
  }

  /** "Type: message" for a throwable, with its first cause, on one line. */
  public static String describe(Throwable t) {
    StringBuilder sb = new StringBuilder(t.getClass().getSimpleName());
    if (t.getMessage() != null) sb.append(": ").append(t.getMessage());
    Throwable c = t.getCause();
    if (c != null && c != t) {
      sb.append(" (caused by ").append(c.getClass().getSimpleName());
      if (c.getMessage() != null) sb.append(": ").append(c.getMessage());
      sb.append(')');
    }
    return sb.toString().replace('\n', ' ');
  }
}
