package dev.mobilec.core;

import java.util.ArrayList;
import java.util.List;

/**
 * Model outputs to answers: softmax, argmax, top-K (classification) and ranked items
 * (recommendation).
 *
 * <pre>{@code
 * List<Postprocessing.Prediction> top = Postprocessing.classify(logits, meta.labels, 5);
 * }</pre>
 */
public final class Postprocessing {
  private Postprocessing() {}

  /** One ranked class. */
  public static final class Prediction {
    public final int index;
    public final String label;
    public final float probability;

    public Prediction(int index, String label, float probability) {
      this.index = index;
      this.label = label;
      this.probability = probability;
    }

    @Override
    public String toString() {
      return label + " (" + index + ") p=" + probability;
    }
  }

  /** Ranked items for one user: item ids and their scores, best first. */
  public static final class Ranking {
    public final long[] items;
    public final float[] scores;

    public Ranking(long[] items, float[] scores) {
      this.items = items;
      this.scores = scores;
    }
  }

  /** Numerically stable softmax (computed in double, returned as float). */
  public static float[] softmax(float[] logits) {
    if (logits.length == 0) throw new IllegalArgumentException("softmax of an empty vector");
    double max = Double.NEGATIVE_INFINITY;
    for (float v : logits) {
      if (Float.isNaN(v)) throw new IllegalArgumentException("model output contains NaN");
      max = Math.max(max, v);
    }
    double sum = 0;
    double[] e = new double[logits.length];
    for (int i = 0; i < logits.length; i++) {
      e[i] = Math.exp(logits[i] - max);
      sum += e[i];
    }
    float[] out = new float[logits.length];
    for (int i = 0; i < logits.length; i++) out[i] = (float) (e[i] / sum);
    return out;
  }

  /** Index of the largest value (the first one on ties). */
  public static int argmax(float[] values) {
    if (values.length == 0) throw new IllegalArgumentException("argmax of an empty vector");
    int best = 0;
    for (int i = 1; i < values.length; i++) {
      if (values[i] > values[best]) best = i;
    }
    return best;
  }

  /** Indices of the k largest values, best first; ties go to the lower index (a stable sort). */
  public static int[] topK(float[] values, int k) {
    if (k < 1) throw new IllegalArgumentException("k must be >= 1");
    int n = Math.min(k, values.length);
    int[] idx = new int[n];
    boolean[] taken = new boolean[values.length];
    for (int j = 0; j < n; j++) {
      int best = -1;
      for (int i = 0; i < values.length; i++) {
        if (taken[i]) continue;
        if (best < 0 || values[i] > values[best]) best = i;
      }
      taken[best] = true;
      idx[j] = best;
    }
    return idx;
  }

  /** Softmax over {@code logits}, then the top {@code k} classes with their labels. */
  public static List<Prediction> classify(float[] logits, List<String> labels, int k) {
    if (!labels.isEmpty() && labels.size() != logits.length) {
      throw new IllegalArgumentException(
          "the model produced " + logits.length + " scores but the metadata lists " + labels.size() + " labels");
    }
    float[] p = softmax(logits);
    List<Prediction> out = new ArrayList<>();
    for (int i : topK(p, k)) {
      String label = labels.isEmpty() ? "class " + i : labels.get(i);
      out.add(new Prediction(i, label, p[i]));
    }
    return out;
  }

  /**
   * The top {@code k} items from a recommender's outputs: either one float score per item
   * ({@code "scores"}), or an int64 id tensor plus a float score tensor ({@code "topk"}, in
   * either order).
   */
  public static Ranking recommend(List<TensorData> outputs, String kind, int k) {
    if (outputs.isEmpty()) throw new IllegalArgumentException("the model returned no outputs");
    if ("scores".equals(kind)) {
      float[] scores = null;
      for (TensorData t : outputs) {
        if (t.isFloat()) {
          scores = t.floats();
          break;
        }
      }
      if (scores == null) throw new IllegalArgumentException("no float score output found");
      int[] idx = topK(scores, k);
      long[] items = new long[idx.length];
      float[] s = new float[idx.length];
      for (int i = 0; i < idx.length; i++) {
        items[i] = idx[i];
        s[i] = scores[idx[i]];
      }
      return new Ranking(items, s);
    }
    if ("topk".equals(kind)) {
      TensorData ids = null;
      TensorData scores = null;
      for (TensorData t : outputs) {
        if (!t.isFloat() && ids == null) ids = t;
        else if (t.isFloat() && scores == null) scores = t;
      }
      if (ids == null || scores == null) {
        throw new IllegalArgumentException("a top-K recommender must return an int64 id tensor and a float score tensor");
      }
      if (ids.size() != scores.size()) {
        throw new IllegalArgumentException("top-K ids and scores differ in length");
      }
      int n = Math.min(k, ids.size());
      long[] items = new long[n];
      float[] s = new float[n];
      System.arraycopy(ids.longs(), 0, items, 0, n);
      System.arraycopy(scores.floats(), 0, s, 0, n);
      return new Ranking(items, s);
    }
    throw new IllegalArgumentException("unknown recommender output kind '" + kind + "'");
  }
}
