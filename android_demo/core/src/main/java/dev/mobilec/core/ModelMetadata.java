package dev.mobilec.core;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;

/**
 * The bundler's {@code mobilec_metadata.json} (written by {@code mobilec android bundle}), parsed
 * and validated: which model file to load, its runtime and input, how to preprocess an image, the
 * labels, the recipe, and a sample with the prediction the host runtime made for it.
 *
 * <pre>{@code
 * ModelMetadata meta = ModelMetadata.parse(jsonText);
 * float[] x = Preprocessing.argbToNchw(pixels, w, h, meta);
 * }</pre>
 *
 * <p>Any missing or mistyped field raises {@link InvalidMetadataException} naming the field.
 */
public final class ModelMetadata {
  /** The schema this reader understands; the bundler writes the same string. */
  public static final String SCHEMA = "mobilec.android.bundle/1";

  /** The asset name the bundler writes and the app reads. */
  public static final String ASSET_NAME = "mobilec_metadata.json";

  /** Invalid metadata: the message names the field and what was expected. */
  public static final class InvalidMetadataException extends IllegalArgumentException {
    private static final long serialVersionUID = 1L;

    InvalidMetadataException(String message) {
      super(ASSET_NAME + ": " + message + " (re-run `mobilec android bundle ARTIFACT`)");
    }
  }

  /** One expected class prediction recorded by the bundler. */
  public static final class ExpectedClass {
    public final int index;
    public final String label;
    public final float probability;

    ExpectedClass(int index, String label, float probability) {
      this.index = index;
      this.label = label;
      this.probability = probability;
    }
  }

  public final String schema;
  public final String generator;
  public final String modelFile;
  public final String modelSha256; // may be null
  public final long modelBytes; // -1 when absent
  public final RuntimeKind runtime;
  public final Task task;
  public final long[] inputShape;
  public final String inputDtype;
  public final QuantParams inputQuant; // non-null when the runtime takes int8/uint8 (LiteRT)
  public final QuantParams outputQuant; // non-null when the first output is int8/uint8
  // classification preprocessing: x = (pixel / pixelScale - mean[c]) / std[c]
  public final float pixelScale;
  public final float[] mean;
  public final float[] std;
  public final List<String> labels;
  public final String recipe; // may be null
  public final String modelName; // may be null
  public final String dataset; // may be null
  // sample
  public final String sampleImage; // classification: asset name of the PNG; else null
  public final int sampleTrueLabel; // -1 when unknown
  public final int expectedTop1; // -1 when absent
  public final List<ExpectedClass> expectedTop5;
  public final String expectedSource;
  // recommendation
  public final long sampleUserId; // -1 when not a recommender
  public final long[] expectedItems;
  public final float[] expectedScores;
  public final int topK;
  public final String recommendationOutput; // "scores" | "topk" | null
  public final long numItems; // -1 when unknown

  private ModelMetadata(Map<String, Object> root) {
    Fields f = new Fields(root, "");
    schema = f.string("schema");
    if (!SCHEMA.equals(schema)) {
      throw new InvalidMetadataException(
          "schema is \"" + schema + "\" but this app reads \"" + SCHEMA + "\"");
    }
    generator = f.optString("generator");
    modelFile = f.string("model_file");
    if (modelFile.isEmpty() || modelFile.contains("/") || modelFile.contains("\\")) {
      throw new InvalidMetadataException("model_file must be a plain asset file name, got \"" + modelFile + "\"");
    }
    modelSha256 = f.optString("model_sha256");
    modelBytes = f.has("model_bytes") ? f.integer("model_bytes") : -1;
    runtime = f.enumValue("runtime", RuntimeKind::fromId);
    RuntimeKind bySuffix;
    try {
      bySuffix = RuntimeKind.fromFileName(modelFile);
    } catch (IllegalArgumentException e) {
      throw new InvalidMetadataException("model_file: " + e.getMessage());
    }
    if (bySuffix != runtime) {
      throw new InvalidMetadataException(
          "runtime \"" + runtime.id + "\" does not match model_file \"" + modelFile + "\"");
    }
    task = f.enumValue("task", Task::fromId);
    Fields input = f.object("input");
    inputShape = input.longArray("shape");
    if (inputShape.length == 0) throw new InvalidMetadataException("input.shape is empty");
    for (long d : inputShape) {
      if (d <= 0) throw new InvalidMetadataException("input.shape has a non-positive dimension");
    }
    inputDtype = input.string("dtype");
    inputQuant = input.quantOrNull("quantization");
    outputQuant = f.has("output") ? f.object("output").quantOrNull("quantization") : null;
    labels = f.has("labels") ? f.stringList("labels") : Collections.<String>emptyList();
    recipe = f.optString("recipe");
    modelName = f.optString("model_name");
    dataset = f.optString("dataset");
    Fields sample = f.object("sample");
    expectedSource = sample.optString("expected_source");

    if (task == Task.CLASSIFICATION) {
      if (!"float32".equals(inputDtype)) {
        throw new InvalidMetadataException("a classifier's input.dtype must be float32, got " + inputDtype);
      }
      if (inputShape.length != 4 || inputShape[0] != 1) {
        throw new InvalidMetadataException("a classifier's input.shape must be [1, C, H, W]");
      }
      int channels = (int) inputShape[1];
      if (channels != 1 && channels != 3) {
        throw new InvalidMetadataException("input has " + channels + " channels; the app handles 1 or 3");
      }
      Fields pre = f.object("preprocessing");
      pixelScale = pre.number("pixel_scale");
      mean = pre.floatArray("mean");
      std = pre.floatArray("std");
      if (mean.length != channels || std.length != channels) {
        throw new InvalidMetadataException(
            "preprocessing.mean/std need " + channels + " values (one per channel)");
      }
      for (float s : std) {
        if (!(s > 0)) throw new InvalidMetadataException("preprocessing.std values must be > 0");
      }
      if (!(pixelScale > 0)) throw new InvalidMetadataException("preprocessing.pixel_scale must be > 0");
      if (labels.isEmpty()) throw new InvalidMetadataException("labels is empty");
      sampleImage = sample.string("image");
      sampleTrueLabel = sample.has("true_label") && sample.get("true_label") != null
          ? (int) sample.integer("true_label") : -1;
      expectedTop1 = (int) sample.integer("expected_top1");
      checkLabelIndex("sample.expected_top1", expectedTop1);
      if (sampleTrueLabel != -1) checkLabelIndex("sample.true_label", sampleTrueLabel);
      List<ExpectedClass> top = new ArrayList<>();
      if (sample.has("expected_top5")) {
        List<Fields> items = sample.objectList("expected_top5");
        for (Fields item : items) {
          int idx = (int) item.integer("index");
          checkLabelIndex("sample.expected_top5[].index", idx);
          top.add(new ExpectedClass(idx, item.string("label"), item.number("probability")));
        }
      }
      expectedTop5 = Collections.unmodifiableList(top);
      sampleUserId = -1;
      expectedItems = new long[0];
      expectedScores = new float[0];
      topK = top.size();
      recommendationOutput = null;
      numItems = -1;
    } else {
      if (!"int64".equals(inputDtype) && !"int32".equals(inputDtype)) {
        throw new InvalidMetadataException("a recommender's input.dtype must be int64 or int32, got " + inputDtype);
      }
      Fields rec = f.object("recommendation");
      recommendationOutput = rec.string("output");
      if (!"scores".equals(recommendationOutput) && !"topk".equals(recommendationOutput)) {
        throw new InvalidMetadataException(
            "recommendation.output must be \"scores\" or \"topk\", got \"" + recommendationOutput + "\"");
      }
      topK = (int) rec.integer("top_k");
      if (topK < 1) throw new InvalidMetadataException("recommendation.top_k must be >= 1");
      numItems = rec.has("num_items") && rec.get("num_items") != null ? rec.integer("num_items") : -1;
      sampleUserId = sample.integer("user_id");
      expectedItems = sample.longArray("expected_items");
      expectedScores = sample.floatArray("expected_scores");
      if (expectedItems.length != expectedScores.length) {
        throw new InvalidMetadataException("sample.expected_items and expected_scores differ in length");
      }
      pixelScale = 0f;
      mean = new float[0];
      std = new float[0];
      sampleImage = null;
      sampleTrueLabel = -1;
      expectedTop1 = -1;
      expectedTop5 = Collections.emptyList();
    }
  }

  private void checkLabelIndex(String field, int idx) {
    if (idx < 0 || idx >= labels.size()) {
      throw new InvalidMetadataException(field + " = " + idx + " is outside the " + labels.size() + " labels");
    }
  }

  /** Parses and validates metadata JSON text. */
  public static ModelMetadata parse(String jsonText) {
    Map<String, Object> root;
    try {
      root = Json.parseObject(jsonText);
    } catch (Json.ParseException e) {
      throw new InvalidMetadataException(e.getMessage());
    }
    return new ModelMetadata(root);
  }

  public int channels() {
    return (int) inputShape[1];
  }

  public int height() {
    return (int) inputShape[2];
  }

  public int width() {
    return (int) inputShape[3];
  }

  /** The label of a class index, or "class N" when out of range. */
  public String label(int index) {
    return index >= 0 && index < labels.size() ? labels.get(index) : "class " + index;
  }

  // ------------------------------------------------------------------ typed field access

  /** Typed, path-aware access to one JSON object, so errors name the exact field. */
  static final class Fields {
    final Map<String, Object> map;
    final String prefix;

    Fields(Map<String, Object> map, String prefix) {
      this.map = map;
      this.prefix = prefix;
    }

    boolean has(String key) {
      return map.containsKey(key);
    }

    Object get(String key) {
      return map.get(key);
    }

    private Object require(String key) {
      if (!map.containsKey(key)) throw new InvalidMetadataException("missing field " + prefix + key);
      return map.get(key);
    }

    private InvalidMetadataException wrong(String key, String expected, Object got) {
      return new InvalidMetadataException(
          "field " + prefix + key + " must be " + expected + ", found " + Json.typeName(got));
    }

    String string(String key) {
      Object v = require(key);
      if (!(v instanceof String)) throw wrong(key, "a string", v);
      return (String) v;
    }

    String optString(String key) {
      Object v = map.get(key);
      if (v == null) return null;
      if (!(v instanceof String)) throw wrong(key, "a string or null", v);
      return (String) v;
    }

    long integer(String key) {
      Object v = require(key);
      if (v instanceof Long) return (Long) v;
      throw wrong(key, "an integer", v);
    }

    float number(String key) {
      Object v = require(key);
      if (v instanceof Number) return ((Number) v).floatValue();
      throw wrong(key, "a number", v);
    }

    <T> T enumValue(String key, java.util.function.Function<String, T> parser) {
      String s = string(key);
      try {
        return parser.apply(s);
      } catch (IllegalArgumentException e) {
        throw new InvalidMetadataException("field " + prefix + key + ": " + e.getMessage());
      }
    }

    Fields object(String key) {
      Object v = require(key);
      if (!(v instanceof Map)) throw wrong(key, "an object", v);
      @SuppressWarnings("unchecked")
      Map<String, Object> m = (Map<String, Object>) v;
      return new Fields(m, prefix + key + ".");
    }

    private List<?> list(String key) {
      Object v = require(key);
      if (!(v instanceof List)) throw wrong(key, "an array", v);
      return (List<?>) v;
    }

    long[] longArray(String key) {
      List<?> l = list(key);
      long[] out = new long[l.size()];
      for (int i = 0; i < out.length; i++) {
        if (!(l.get(i) instanceof Long)) throw wrong(key, "an array of integers", l.get(i));
        out[i] = (Long) l.get(i);
      }
      return out;
    }

    float[] floatArray(String key) {
      List<?> l = list(key);
      float[] out = new float[l.size()];
      for (int i = 0; i < out.length; i++) {
        if (!(l.get(i) instanceof Number)) throw wrong(key, "an array of numbers", l.get(i));
        out[i] = ((Number) l.get(i)).floatValue();
      }
      return out;
    }

    List<String> stringList(String key) {
      List<?> l = list(key);
      List<String> out = new ArrayList<>(l.size());
      for (Object o : l) {
        if (!(o instanceof String)) throw wrong(key, "an array of strings", o);
        out.add((String) o);
      }
      return Collections.unmodifiableList(out);
    }

    QuantParams quant(String key) {
      Fields q = object(key);
      try {
        return new QuantParams(q.string("dtype"), q.number("scale"), (int) q.integer("zero_point"));
      } catch (InvalidMetadataException e) {
        throw e;
      } catch (IllegalArgumentException e) {
        throw new InvalidMetadataException("field " + prefix + key + ": " + e.getMessage());
      }
    }

    QuantParams quantOrNull(String key) {
      return has(key) && get(key) != null ? quant(key) : null;
    }

    List<Fields> objectList(String key) {
      List<?> l = list(key);
      List<Fields> out = new ArrayList<>(l.size());
      for (int i = 0; i < l.size(); i++) {
        Object o = l.get(i);
        if (!(o instanceof Map)) throw wrong(key, "an array of objects", o);
        @SuppressWarnings("unchecked")
        Map<String, Object> m = (Map<String, Object>) o;
        out.add(new Fields(m, prefix + key + "[" + i + "]."));
      }
      return out;
    }
  }
}
