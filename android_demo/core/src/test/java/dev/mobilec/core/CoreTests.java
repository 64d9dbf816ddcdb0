package dev.mobilec.core;

import static dev.mobilec.core.TestHarness.arrayEq;
import static dev.mobilec.core.TestHarness.check;
import static dev.mobilec.core.TestHarness.eq;
import static dev.mobilec.core.TestHarness.near;
import static dev.mobilec.core.TestHarness.throwsWith;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;

/** Unit tests of the core module; run by run-tests.sh with plain javac/java (no Gradle, no JUnit). */
public final class CoreTests {
  private CoreTests() {}

  static final String CLASSIFIER_META =
      "{\n"
          + "  \"schema\": \"mobilec.android.bundle/1\",\n"
          + "  \"generator\": \"mobilec 0.1.0\",\n"
          + "  \"model_file\": \"mnv2_int8.pte\",\n"
          + "  \"model_sha256\": \"ab12\",\n"
          + "  \"model_bytes\": 123456,\n"
          + "  \"runtime\": \"executorch\",\n"
          + "  \"task\": \"classification\",\n"
          + "  \"input\": {\"shape\": [1, 1, 28, 28], \"dtype\": \"float32\", \"layout\": \"NCHW\"},\n"
          + "  \"preprocessing\": {\"pixel_scale\": 255.0, \"mean\": [0.286], \"std\": [0.353]},\n"
          + "  \"labels\": [\"T-shirt/top\", \"Trouser\", \"Pullover\"],\n"
          + "  \"recipe\": \"int8\",\n"
          + "  \"model_name\": null,\n"
          + "  \"sample\": {\"kind\": \"image\", \"image\": \"mobilec_sample.png\", \"true_label\": 1,\n"
          + "             \"expected_top1\": 1, \"expected_top5\": [{\"index\": 1, \"label\": \"Trouser\","
          + " \"probability\": 0.97}],\n"
          + "             \"expected_source\": \"host executorch runtime\"}\n"
          + "}\n";

  static final String RECOMMENDER_META =
      "{\"schema\": \"mobilec.android.bundle/1\", \"model_file\": \"rec.tflite\", \"runtime\": \"tflite\","
          + " \"task\": \"recommendation\", \"input\": {\"shape\": [1], \"dtype\": \"int64\"},"
          + " \"recommendation\": {\"output\": \"scores\", \"top_k\": 3, \"num_items\": 50},"
          + " \"sample\": {\"kind\": \"user\", \"user_id\": 7, \"expected_items\": [4, 9, 1],"
          + " \"expected_scores\": [2.5, 2.0, 1.5]}}";

  public static void main(String[] args) {
    TestHarness h = new TestHarness();
    jsonTests(h);
    metadataTests(h);
    preprocessingTests(h);
    postprocessingTests(h);
    statsTests(h);
    benchmarkTests(h);
    System.exit(h.runAll() == 0 ? 0 : 1);
  }

  static String replace(String text, String from, String to) {
    check(text.contains(from), "test fixture lacks <" + from + ">");
    return text.replace(from, to);
  }

  // ------------------------------------------------------------------ JSON

  static void jsonTests(TestHarness h) {
    h.test("json parses nested values with exact types", () -> {
      Map<String, Object> m = Json.parseObject("{\"a\": [1, -2.5e1, \"x\\u00e9\\n\"], \"b\": {\"c\": null, \"d\": true}}");
      List<?> a = (List<?>) m.get("a");
      eq(1L, a.get(0));
      eq(-25.0, a.get(1));
      eq("xé\n", a.get(2));
      Map<?, ?> b = (Map<?, ?>) m.get("b");
      check(b.containsKey("c") && b.get("c") == null, "null kept");
      eq(Boolean.TRUE, b.get("d"));
    });
    h.test("json round-trips through write and writePretty", () -> {
      String text = "{\"k\":[1,2.5,\"q\\\"uote\",false,null,{\"z\":[]}],\"e\":{}}";
      Object v = Json.parse(text);
      eq(text, Json.write(v));
      eq(v, Json.parse(Json.writePretty(v, 2)));
    });
    h.test("json floats are written so they read back as the same float", () -> {
      float[] xs = {0.1f, 1e-7f, 3.4028235e38f, -0.0f, 123456.79f};
      String text = Json.write(xs);
      List<?> back = (List<?>) Json.parse(text);
      for (int i = 0; i < xs.length; i++) {
        eq(Float.floatToIntBits(xs[i]), Float.floatToIntBits(((Number) back.get(i)).floatValue()));
      }
    });
    h.test("json rejects malformed text with the offset", () -> {
      throwsWith(Json.ParseException.class, "offset", () -> Json.parse("{\"a\": [1, 2,]}"));
      throwsWith(Json.ParseException.class, "unterminated string", () -> Json.parse("\"abc"));
      throwsWith(Json.ParseException.class, "duplicate key", () -> Json.parse("{\"a\":1,\"a\":2}"));
      throwsWith(Json.ParseException.class, "trailing", () -> Json.parse("01"));
      throwsWith(Json.ParseException.class, "trailing", () -> Json.parse("{} {}"));
      throwsWith(Json.ParseException.class, "top level", () -> Json.parseObject("[1]"));
    });
    h.test("json refuses to write NaN", () ->
        throwsWith(IllegalArgumentException.class, "NaN", () -> Json.write(Arrays.asList(Double.NaN))));
  }

  // ------------------------------------------------------------------ metadata

  static void metadataTests(TestHarness h) {
    h.test("metadata: classifier fields parse", () -> {
      ModelMetadata m = ModelMetadata.parse(CLASSIFIER_META);
      eq("mnv2_int8.pte", m.modelFile);
      eq(RuntimeKind.EXECUTORCH, m.runtime);
      eq(Task.CLASSIFICATION, m.task);
      arrayEq(new long[] {1, 1, 28, 28}, m.inputShape);
      eq(1, m.channels());
      eq(28, m.width());
      near(0.286, m.mean[0], 1e-7);
      near(0.353, m.std[0], 1e-7);
      near(255.0, m.pixelScale, 0);
      eq(3, m.labels.size());
      eq("int8", m.recipe);
      check(m.modelName == null, "null model_name");
      eq("mobilec_sample.png", m.sampleImage);
      eq(1, m.sampleTrueLabel);
      eq(1, m.expectedTop1);
      eq("Trouser", m.expectedTop5.get(0).label);
      eq(123456L, m.modelBytes);
    });
    h.test("metadata: recommender fields parse", () -> {
      ModelMetadata m = ModelMetadata.parse(RECOMMENDER_META);
      eq(Task.RECOMMENDATION, m.task);
      eq(RuntimeKind.TFLITE, m.runtime);
      eq(7L, m.sampleUserId);
      arrayEq(new long[] {4, 9, 1}, m.expectedItems);
      eq(3, m.topK);
      eq("scores", m.recommendationOutput);
      eq(50L, m.numItems);
    });
    h.test("metadata: errors name the field", () -> {
      throwsWith(ModelMetadata.InvalidMetadataException.class, "missing field input.dtype",
          () -> ModelMetadata.parse(replace(CLASSIFIER_META, "\"dtype\": \"float32\", ", "")));
      throwsWith(ModelMetadata.InvalidMetadataException.class, "input.shape must be an array of integers",
          () -> ModelMetadata.parse(replace(CLASSIFIER_META, "[1, 1, 28, 28]", "[1, 1, 28.5, 28]")));
      throwsWith(ModelMetadata.InvalidMetadataException.class, "does not match model_file",
          () -> ModelMetadata.parse(replace(CLASSIFIER_META, "\"runtime\": \"executorch\"", "\"runtime\": \"tflite\"")));
      throwsWith(ModelMetadata.InvalidMetadataException.class, "unsupported model file",
          () -> ModelMetadata.parse(replace(CLASSIFIER_META, "mnv2_int8.pte", "mnv2.onnx")));
      throwsWith(ModelMetadata.InvalidMetadataException.class, "plain asset file name",
          () -> ModelMetadata.parse(replace(CLASSIFIER_META, "mnv2_int8.pte", "../x.pte")));
      throwsWith(ModelMetadata.InvalidMetadataException.class, "schema",
          () -> ModelMetadata.parse(replace(CLASSIFIER_META, "bundle/1", "bundle/2")));
      throwsWith(ModelMetadata.InvalidMetadataException.class, "expected_top1 = 5 is outside the 3 labels",
          () -> ModelMetadata.parse(replace(CLASSIFIER_META, "\"expected_top1\": 1", "\"expected_top1\": 5")));
      throwsWith(ModelMetadata.InvalidMetadataException.class, "one per channel",
          () -> ModelMetadata.parse(replace(CLASSIFIER_META, "[0.286]", "[0.286, 0.2]")));
      throwsWith(ModelMetadata.InvalidMetadataException.class, "invalid JSON",
          () -> ModelMetadata.parse("{\"schema\": "));
      throwsWith(ModelMetadata.InvalidMetadataException.class, "recommendation.output",
          () -> ModelMetadata.parse(replace(RECOMMENDER_META, "\"scores\"", "\"logits\"")));
    });
  }

  // ------------------------------------------------------------------ preprocessing

  static int gray(int g) {
    return 0xff000000 | (g << 16) | (g << 8) | g;
  }

  static void preprocessingTests(TestHarness h) {
    h.test("preprocessing: gray pixels normalize in float32 order", () -> {
      ModelMetadata m = ModelMetadata.parse(CLASSIFIER_META);
      int[] px = new int[28 * 28];
      px[0] = gray(0);
      px[1] = gray(255);
      px[2] = gray(128);
      float[] x = Preprocessing.argbToNchw(px, 28, 28, m);
      eq(784, x.length);
      float mean = 0.286f;
      float std = 0.353f;
      eq(Float.floatToIntBits(((0f / 255f) - mean) / std), Float.floatToIntBits(x[0]));
      eq(Float.floatToIntBits(((255f / 255f) - mean) / std), Float.floatToIntBits(x[1]));
      eq(Float.floatToIntBits(((128f / 255f) - mean) / std), Float.floatToIntBits(x[2]));
      near((128 / 255.0 - 0.286) / 0.353, x[2], 1e-6);
    });
    h.test("preprocessing: luminance is exact for gray and weights RGB", () -> {
      for (int g = 0; g < 256; g++) eq(g, Preprocessing.luminance(g, g, g));
      eq(76, Preprocessing.luminance(255, 0, 0)); // 0.299 * 255 = 76.2
      eq(150, Preprocessing.luminance(0, 255, 0));
      eq(29, Preprocessing.luminance(0, 0, 255));
    });
    h.test("preprocessing: RGB goes to separate NCHW planes", () -> {
      int[] px = {0xff102030, 0xff405060};
      float[] x = Preprocessing.argbToNchw(px, 2, 1, 3, 255f, new float[] {0, 0, 0}, new float[] {1, 1, 1});
      near(0x10 / 255.0, x[0], 1e-7);
      near(0x40 / 255.0, x[1], 1e-7);
      near(0x20 / 255.0, x[2], 1e-7);
      near(0x50 / 255.0, x[3], 1e-7);
      near(0x30 / 255.0, x[4], 1e-7);
      near(0x60 / 255.0, x[5], 1e-7);
    });
    h.test("preprocessing: wrong image size is refused", () -> {
      ModelMetadata m = ModelMetadata.parse(CLASSIFIER_META);
      throwsWith(IllegalArgumentException.class, "resize", () -> Preprocessing.argbToNchw(new int[32 * 32], 32, 32, m));
      throwsWith(IllegalArgumentException.class, "pixels", () ->
          Preprocessing.argbToNchw(new int[3], 2, 2, 1, 255f, new float[] {0}, new float[] {1}));
    });
  }

  // ------------------------------------------------------------------ postprocessing

  static void postprocessingTests(TestHarness h) {
    h.test("softmax: sums to one, shift invariant, no overflow", () -> {
      float[] p = Postprocessing.softmax(new float[] {1f, 2f, 3f});
      near(1.0, p[0] + p[1] + p[2], 1e-6);
      near(Math.exp(1) / (Math.exp(1) + Math.exp(2) + Math.exp(3)), p[0], 1e-7);
      float[] q = Postprocessing.softmax(new float[] {1001f, 1002f, 1003f});
      for (int i = 0; i < 3; i++) near(p[i], q[i], 1e-7);
      throwsWith(IllegalArgumentException.class, "NaN", () -> Postprocessing.softmax(new float[] {Float.NaN}));
    });
    h.test("argmax and topK break ties toward the lower index", () -> {
      eq(1, Postprocessing.argmax(new float[] {0f, 5f, 5f, 1f}));
      arrayEq(new int[] {1, 2, 3}, Postprocessing.topK(new float[] {0f, 5f, 5f, 1f}, 3));
      arrayEq(new int[] {2, 0}, Postprocessing.topK(new float[] {0.5f, -1f, 9f}, 2));
      eq(3, Postprocessing.topK(new float[] {1f, 2f, 3f}, 10).length);
    });
    h.test("classify ranks labels and checks the label count", () -> {
      List<Postprocessing.Prediction> top =
          Postprocessing.classify(new float[] {0f, 3f, 1f}, Arrays.asList("a", "b", "c"), 2);
      eq("b", top.get(0).label);
      eq(2, top.get(1).index);
      throwsWith(IllegalArgumentException.class, "labels",
          () -> Postprocessing.classify(new float[] {0f, 1f}, Arrays.asList("a", "b", "c"), 1));
    });
    h.test("recommend: scores output and top-k output", () -> {
      List<TensorData> scores = new ArrayList<>();
      scores.add(TensorData.ofFloats(new float[] {0.1f, 0.9f, 0.5f, 0.7f}, new long[] {1, 4}));
      Postprocessing.Ranking r = Postprocessing.recommend(scores, "scores", 2);
      arrayEq(new long[] {1, 3}, r.items);
      near(0.7, r.scores[1], 1e-7);
      List<TensorData> topk = new ArrayList<>();
      topk.add(TensorData.ofFloats(new float[] {3f, 2f}));
      topk.add(TensorData.ofLongs(new long[] {42, 7}));
      Postprocessing.Ranking t = Postprocessing.recommend(topk, "topk", 5);
      arrayEq(new long[] {42, 7}, t.items);
      throwsWith(IllegalArgumentException.class, "int64 id tensor",
          () -> Postprocessing.recommend(scores, "topk", 2));
    });
    h.test("quantization rounds half to even, clamps, and dequantizes", () -> {
      QuantParams q = new QuantParams("int8", 0.5f, -3);
      byte[] b = q.quantize(new float[] {1.25f, 1.75f, 1000f, -1000f, 0f});
      eq(-1, (int) b[0]); // rint(2.5) = 2 (half to even), + -3
      eq(1, (int) b[1]); // rint(3.5) = 4, + -3
      eq(127, (int) b[2]);
      eq(-128, (int) b[3]);
      eq(-3, (int) b[4]);
      float[] x = q.dequantize(new byte[] {(byte) -3, (byte) 1, (byte) -128});
      near(0.0, x[0], 0);
      near(2.0, x[1], 0);
      near(-62.5, x[2], 0);
      QuantParams u = new QuantParams("uint8", 1f, 128);
      eq(255, u.quantize(new float[] {200f})[0] & 0xff);
      near(127.0, u.dequantize(new byte[] {(byte) 255})[0], 0);
      throwsWith(IllegalArgumentException.class, "scale", () -> new QuantParams("int8", 0f, 0));
    });
    h.test("metadata: quantized LiteRT input and output", () -> {
      String base = replace(replace(CLASSIFIER_META, "mnv2_int8.pte", "m.tflite"), "\"executorch\"", "\"tflite\"");
      String text = replace(base, "\"layout\": \"NCHW\"}",
          "\"layout\": \"NCHW\", \"quantization\": {\"dtype\": \"int8\", \"scale\": 0.02, \"zero_point\": -5}},"
              + " \"output\": {\"quantization\": {\"dtype\": \"int8\", \"scale\": 0.1, \"zero_point\": 3}}");
      ModelMetadata m = ModelMetadata.parse(text);
      eq("int8", m.inputQuant.dtype);
      eq(-5, m.inputQuant.zeroPoint);
      near(0.1, m.outputQuant.scale, 1e-7);
      check(ModelMetadata.parse(CLASSIFIER_META).inputQuant == null, "float model: no quantization");
      throwsWith(ModelMetadata.InvalidMetadataException.class, "input.quantization",
          () -> ModelMetadata.parse(replace(text, "\"scale\": 0.02", "\"scale\": -1")));
    });
    h.test("tensor data checks its shape", () -> {
      throwsWith(IllegalArgumentException.class, "holds 4 values but 3",
          () -> TensorData.ofFloats(new float[3], new long[] {2, 2}));
      throwsWith(IllegalStateException.class, "float32", () -> TensorData.ofFloats(new float[1]).longs());
    });
  }

  // ------------------------------------------------------------------ statistics

  static void statsTests(TestHarness h) {
    h.test("latency stats match numpy's linear percentiles", () -> {
      double[] v = {10, 1, 9, 2, 8, 3, 7, 4, 6, 5}; // 1..10 shuffled
      LatencyStats s = LatencyStats.of(v);
      near(5.5, s.p50, 1e-12); // numpy.percentile(range(1, 11), 50)
      near(1.9, s.p10, 1e-12);
      near(9.1, s.p90, 1e-12);
      near(9.91, s.p99, 1e-12);
      near(5.5, s.mean, 1e-12);
      near(5.5, s.trimmedMean, 1e-12); // mean of 2..9
      near(Math.sqrt(8.25), s.std, 1e-12);
      eq(10.0, v[0]); // input untouched
      near(4.0, LatencyStats.of(new double[] {4}).p90, 0);
      throwsWith(IllegalArgumentException.class, "no latencies", () -> LatencyStats.of(new double[0]));
    });
    h.test("proc status: VmHWM and VmRSS in kB", () -> {
      String status = "Name:\tdev.mobilec.demo\nVmPeak:\t 2000000 kB\nVmHWM:\t  123456 kB\nVmRSS:\t   99999 kB\n";
      eq(123456L, ProcStatus.peakResidentKb(status));
      eq(99999L, ProcStatus.residentKb(status));
      check(ProcStatus.peakResidentKb("Name: x\n") == null, "absent -> null");
    });
  }

  // ------------------------------------------------------------------ benchmark

  /** A clock that advances by fixed steps on each reading. */
  static final class StepClock implements BenchmarkRunner.Clock {
    long now = 0;
    long step;

    StepClock(long step) {
      this.step = step;
    }

    @Override
    public long nanos() {
      now += step;
      return now;
    }
  }

  static final class CountingSession implements BenchmarkRunner.Session {
    int runs = 0;
    int failAt = -1;
    boolean closed = false;

    @Override
    public void run() {
      runs++;
      if (runs == failAt) throw new IllegalStateException("kernel failed on run " + runs);
    }

    @Override
    public void close() {
      closed = true;
    }
  }

  static void benchmarkTests(TestHarness h) {
    h.test("benchmark: load, first run, warm-up, timed runs", () -> {
      CountingSession session = new CountingSession();
      BenchmarkConfig cfg = new BenchmarkConfig("/data/local/tmp/m.pte", 4, 3, 2, "results.json");
      BenchmarkResult r = BenchmarkRunner.run(cfg, () -> session, new StepClock(2_500_000L), () -> 4242L);
      check(r.ok(), "no error: " + r.error);
      eq(1 + 3 + 4, session.runs);
      check(session.closed, "session closed");
      eq(4, r.latenciesMs.length);
      for (double l : r.latenciesMs) near(2.5, l, 1e-9); // one clock step between start and end
      near(2.5, r.loadMs, 1e-9);
      near(2.5, r.firstRunMs, 1e-9);
      eq(4242L, r.peakMemoryKb);
      // the window spans the timed runs only: from the reading before the first to the one after the last
      near(r.timedWindowMs[0] + 4 * 2 * 2.5, r.timedWindowMs[1], 1e-9);
      eq("executorch", r.runtime);
      eq(2, r.threads);
    });
    h.test("benchmark: a failing load becomes an error, not a crash", () -> {
      BenchmarkConfig cfg = new BenchmarkConfig("/sdcard/missing.tflite", 5, 1, 1, "results.json");
      BenchmarkResult r = BenchmarkRunner.run(cfg, () -> {
        throw new java.io.FileNotFoundException("/sdcard/missing.tflite (No such file or directory)");
      }, new StepClock(1), () -> null);
      eq("tflite", r.runtime);
      check(r.error.startsWith("FileNotFoundException: /sdcard/missing.tflite"), r.error);
      eq(0, r.latenciesMs.length);
      check(r.loadMs == null && r.firstRunMs == null, "nothing measured");
      check(r.timedWindowMs == null, "no window without timed runs");
    });
    h.test("benchmark: native and mid-run failures are reported", () -> {
      BenchmarkConfig cfg = new BenchmarkConfig("m.pte", 5, 1, 1, "results.json");
      BenchmarkResult r1 = BenchmarkRunner.run(cfg, () -> {
        throw new UnsatisfiedLinkError("dlopen failed: libexecutorch.so");
      }, new StepClock(1), () -> 1L);
      check(r1.error.contains("UnsatisfiedLinkError: dlopen failed"), r1.error);
      CountingSession s = new CountingSession();
      s.failAt = 4;
      BenchmarkResult r2 = BenchmarkRunner.run(cfg, () -> s, new StepClock(1_000_000L), () -> 1L);
      check(r2.error.contains("kernel failed on run 4"), r2.error);
      check(r2.loadMs != null && r2.firstRunMs != null, "timings before the failure kept");
      check(s.closed, "closed after failure");
    });
    h.test("benchmark: invalid requests never load the model", () -> {
      BenchmarkRunner.SessionLoader never = () -> {
        throw new AssertionError("must not load");
      };
      String[][] cases = {
        {null, "no model given"}, {"m.onnx", "unsupported model file"},
      };
      for (String[] c : cases) {
        BenchmarkResult r = BenchmarkRunner.run(new BenchmarkConfig(c[0], 5, 0, 1, "r.json"), never, new StepClock(1), () -> null);
        check(r.error.contains(c[1]), r.error);
        check(r.runtime == null, "runtime unknown");
      }
      BenchmarkResult r = BenchmarkRunner.run(new BenchmarkConfig("m.pte", 0, 0, 1, "r.json"), never, new StepClock(1), () -> null);
      check(r.error.contains("iters must be"), r.error);
      eq("executorch", r.runtime);
      check(BenchmarkConfig.isSafeOutName("results.json"), "plain name ok");
      check(!BenchmarkConfig.isSafeOutName("../x.json"), "parent refused");
      check(!BenchmarkConfig.isSafeOutName("a/b.json"), "slash refused");
      check(!BenchmarkConfig.isSafeOutName(".hidden"), "dot-file refused");
    });
    h.test("benchmark JSON has exactly the schema's keys, in order", () -> {
      BenchmarkResult r = new BenchmarkResult("tflite", "/data/local/tmp/m.tflite", new double[] {1.25, 2.5},
          3.0, 4.5, 777L, 4, new double[] {100.0, 103.75}, null);
      Map<String, Object> m = Json.parseObject(r.toJson());
      eq(Arrays.asList("runtime", "model", "latencies_ms", "load_ms", "first_run_ms", "peak_memory_kb", "threads",
          "timed_window_ms", "error"), new ArrayList<>(m.keySet()));
      eq(Arrays.asList(100.0, 103.75), m.get("timed_window_ms"));
      eq(Arrays.asList(1.25, 2.5), m.get("latencies_ms"));
      eq(777L, m.get("peak_memory_kb"));
      eq(4L, m.get("threads"));
      check(m.containsKey("error") && m.get("error") == null, "error is JSON null");
      check(r.toJson().endsWith("\n"), "newline-terminated");
    });
    h.test("benchmark inputs: raw float32 samples, cycled", () -> {
      InputSpec spec = InputSpec.parse("1,2", "float32");
      java.nio.ByteBuffer b = java.nio.ByteBuffer.allocate(16).order(java.nio.ByteOrder.LITTLE_ENDIAN);
      b.putFloat(1f).putFloat(2f).putFloat(3f).putFloat(-4.5f);
      List<TensorData> samples = BenchmarkInputs.fromRawFloat32(b.array(), spec);
      eq(2, samples.size());
      near(-4.5, samples.get(1).floats()[1], 0);
      BenchmarkInputs.Cycle c = new BenchmarkInputs.Cycle(samples);
      check(c.next() == samples.get(0) && c.next() == samples.get(1) && c.next() == samples.get(0), "cycles");
      throwsWith(IllegalArgumentException.class, "whole number of samples",
          () -> BenchmarkInputs.fromRawFloat32(new byte[12], spec));
      List<TensorData> ids = BenchmarkInputs.fromRawFloat32(Arrays.copyOf(b.array(), 8), InputSpec.parse("2", "int64"));
      arrayEq(new long[] {1, 2}, ids.get(0).longs());
      throwsWith(IllegalArgumentException.class, "not an integer id",
          () -> BenchmarkInputs.fromRawFloat32(b.array(), InputSpec.parse("4", "int64")));
    });
    h.test("model inspector refuses foreign and truncated files", () -> {
      java.nio.ByteBuffer junk = java.nio.ByteBuffer.wrap("this is not a model at all....".getBytes("UTF-8"));
      throwsWith(IllegalArgumentException.class, "not an ExecuTorch program", () -> ModelInspector.inspectPte(junk, "x.pte"));
      throwsWith(IllegalArgumentException.class, "not a TFLite model", () -> ModelInspector.inspectTflite(junk, "x.tflite"));
      byte[] fake = new byte[24];
      fake[0] = (byte) 200; // root table offset far past the end
      fake[4] = 'E';
      fake[5] = 'T';
      fake[6] = '1';
      fake[7] = '2';
      throwsWith(IllegalArgumentException.class, "truncated or corrupted",
          () -> ModelInspector.inspectPte(java.nio.ByteBuffer.wrap(fake), "cut.pte"));
    });
    h.test("input spec: parsing and deterministic synthetic inputs", () -> {
      arrayEq(new long[] {1, 1, 28, 28}, InputSpec.parse("1,1,28,28", null).shape);
      arrayEq(new long[] {1, 3, 32, 32}, InputSpec.parse("[1, 3, 32, 32]", "float32").shape);
      throwsWith(IllegalArgumentException.class, "list of integers", () -> InputSpec.parse("1,a", null));
      throwsWith(IllegalArgumentException.class, "dtype", () -> InputSpec.parse("1", "uint8"));
      InputSpec s = InputSpec.parse("2,3", "float32");
      float[] a = s.syntheticInput(0).floats();
      float[] b = s.syntheticInput(0).floats();
      check(Arrays.equals(a, b), "same seed, same input");
      for (float v : a) check(v >= -1f && v < 1f, "in [-1, 1)");
      eq("int64", InputSpec.parse("1", "int64").syntheticInput(0).dtype());
    });
  }
}
