package dev.mobilec.core;

import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * Summary statistics of latencies in milliseconds. Percentiles interpolate linearly between
 * order statistics (numpy's default), so phone and host summaries agree.
 *
 * <pre>{@code
 * LatencyStats s = LatencyStats.of(new double[] {3.1, 2.9, 3.0});
 * s.p50;  // 3.0
 * }</pre>
 */
public final class LatencyStats {
  public final int count;
  public final double mean;
  public final double min;
  public final double max;
  public final double p10;
  public final double p50;
  public final double p90;
  public final double p99;
  public final double std; // population standard deviation
  public final double trimmedMean; // mean of the values between p10 and p90 (10 % cut each side)

  private LatencyStats(double[] sorted) {
    count = sorted.length;
    double sum = 0;
    for (double v : sorted) sum += v;
    mean = sum / count;
    min = sorted[0];
    max = sorted[count - 1];
    p10 = percentile(sorted, 10);
    p50 = percentile(sorted, 50);
    p90 = percentile(sorted, 90);
    p99 = percentile(sorted, 99);
    double ss = 0;
    for (double v : sorted) ss += (v - mean) * (v - mean);
    std = Math.sqrt(ss / count);
    int cut = (int) Math.floor(count * 0.1);
    double tsum = 0;
    for (int i = cut; i < count - cut; i++) tsum += sorted[i];
    trimmedMean = tsum / (count - 2 * cut);
  }

  /** Statistics of a non-empty array of finite values (not modified). */
  public static LatencyStats of(double[] values) {
    if (values.length == 0) throw new IllegalArgumentException("no latencies to summarise");
    for (double v : values) {
      if (Double.isNaN(v) || Double.isInfinite(v)) throw new IllegalArgumentException("latency is not finite");
    }
    double[] sorted = values.clone();
    Arrays.sort(sorted);
    return new LatencyStats(sorted);
  }

  /** The q-th percentile (0..100) of sorted values, linear interpolation (numpy "linear"). */
  public static double percentile(double[] sorted, double q) {
    if (sorted.length == 0) throw new IllegalArgumentException("percentile of nothing");
    if (q < 0 || q > 100) throw new IllegalArgumentException("q must be in [0, 100]");
    double pos = (q / 100.0) * (sorted.length - 1);
    int lo = (int) Math.floor(pos);
    int hi = (int) Math.ceil(pos);
    return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
  }

  /** A JSON-ready map (used for on-screen / log summaries; not part of the benchmark schema). */
  public Map<String, Object> toMap() {
    Map<String, Object> m = new LinkedHashMap<>();
    m.put("count", count);
    m.put("mean", mean);
    m.put("min", min);
    m.put("max", max);
    m.put("p10", p10);
    m.put("p50", p50);
    m.put("p90", p90);
    m.put("p99", p99);
    m.put("std", std);
    m.put("trimmed_mean", trimmedMean);
    return m;
  }
}
