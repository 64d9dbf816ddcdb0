package dev.mobilec.core;

import java.util.ArrayList;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * A small, strict JSON reader and writer (RFC 8259), so the core module needs no Android API.
 *
 * <p>Objects parse to {@code LinkedHashMap<String, Object>} (key order kept), arrays to {@code
 * ArrayList<Object>}, numbers to {@code Long} when they are integers that fit, else {@code Double},
 * plus {@code String}, {@code Boolean} and {@code null}.
 *
 * <pre>{@code
 * Map<String, Object> m = Json.parseObject("{\"a\": [1, 2.5, \"x\"]}");
 * String s = Json.write(m);   // {"a":[1,2.5,"x"]}
 * }</pre>
 */
public final class Json {
  private Json() {}

  /** Malformed JSON text; the message names the offset. */
  public static final class ParseException extends IllegalArgumentException {
    private static final long serialVersionUID = 1L;

    ParseException(String message) {
      super(message);
    }
  }

  /** Parses a JSON document whose top-level value is an object. */
  public static Map<String, Object> parseObject(String text) {
    Object value = parse(text);
    if (!(value instanceof Map)) {
      throw new ParseException("expected a JSON object at the top level, found " + typeName(value));
    }
    @SuppressWarnings("unchecked")
    Map<String, Object> map = (Map<String, Object>) value;
    return map;
  }

  /** Parses any JSON document. */
  public static Object parse(String text) {
    Parser p = new Parser(text);
    p.skipWhitespace();
    Object value = p.readValue(0);
    p.skipWhitespace();
    if (p.pos != text.length()) {
      throw p.error("unexpected trailing characters");
    }
    return value;
  }

  /** Serialises maps, lists, arrays, strings, numbers, booleans and null as compact JSON. */
  public static String write(Object value) {
    StringBuilder sb = new StringBuilder();
    writeValue(sb, value, -1, 0);
    return sb.toString();
  }

  /** Like {@link #write} but indented by {@code indent} spaces per level, ending in a newline. */
  public static String writePretty(Object value, int indent) {
    StringBuilder sb = new StringBuilder();
    writeValue(sb, value, indent, 0);
    return sb.append('\n').toString();
  }

  static String typeName(Object v) {
    if (v == null) return "null";
    if (v instanceof Map) return "object";
    if (v instanceof List) return "array";
    if (v instanceof String) return "string";
    if (v instanceof Boolean) return "boolean";
    if (v instanceof Number) return "number";
    return v.getClass().getSimpleName();
  }

  // ------------------------------------------------------------------ writer

  private static void newline(StringBuilder sb, int indent, int level) {
    if (indent < 0) return;
    sb.append('\n');
    for (int i = 0; i < indent * level; i++) sb.append(' ');
  }

  private static void writeValue(StringBuilder sb, Object v, int indent, int level) {
    if (v == null) {
      sb.append("null");
    } else if (v instanceof String) {
      writeString(sb, (String) v);
    } else if (v instanceof Boolean) {
      sb.append(((Boolean) v) ? "true" : "false");
    } else if (v instanceof Double || v instanceof Float) {
      double d = ((Number) v).doubleValue();
      if (Double.isNaN(d) || Double.isInfinite(d)) {
        throw new IllegalArgumentException("JSON has no representation for " + d);
      }
      if (v instanceof Float) {
        sb.append(Float.toString((Float) v)); // shortest text that reads back as the same float
      } else if (d == Math.rint(d) && Math.abs(d) < 1e15) {
        sb.append((long) d).append(".0");
      } else {
        sb.append(Double.toString(d));
      }
    } else if (v instanceof Number) {
      sb.append(((Number) v).longValue());
    } else if (v instanceof Map) {
      Map<?, ?> m = (Map<?, ?>) v;
      sb.append('{');
      Iterator<? extends Map.Entry<?, ?>> it = m.entrySet().iterator();
      boolean first = true;
      while (it.hasNext()) {
        Map.Entry<?, ?> e = it.next();
        if (!first) sb.append(',');
        first = false;
        newline(sb, indent, level + 1);
        writeString(sb, String.valueOf(e.getKey()));
        sb.append(indent >= 0 ? ": " : ":");
        writeValue(sb, e.getValue(), indent, level + 1);
      }
      if (!m.isEmpty()) newline(sb, indent, level);
      sb.append('}');
    } else if (v instanceof Iterable) {
      sb.append('[');
      boolean first = true;
      for (Object item : (Iterable<?>) v) {
        if (!first) sb.append(indent >= 0 ? ", " : ",");
        first = false;
        writeValue(sb, item, indent, level + 1);
      }
      sb.append(']');
    } else if (v instanceof float[]) {
      List<Object> list = new ArrayList<>();
      for (float f : (float[]) v) list.add(f);
      writeValue(sb, list, indent, level);
    } else if (v instanceof double[]) {
      List<Object> list = new ArrayList<>();
      for (double d : (double[]) v) list.add(d);
      writeValue(sb, list, indent, level);
    } else if (v instanceof long[]) {
      List<Object> list = new ArrayList<>();
      for (long x : (long[]) v) list.add(x);
      writeValue(sb, list, indent, level);
    } else if (v instanceof int[]) {
      List<Object> list = new ArrayList<>();
      for (int x : (int[]) v) list.add(x);
      writeValue(sb, list, indent, level);
    } else {
      throw new IllegalArgumentException("cannot write " + v.getClass().getName() + " as JSON");
    }
  }

  private static void writeString(StringBuilder sb, String s) {
    sb.append('"');
    for (int i = 0; i < s.length(); i++) {
      char c = s.charAt(i);
      switch (c) {
        case '"':
          sb.append("\\\"");
          break;
        case '\\':
          sb.append("\\\\");
          break;
        case '\n':
          sb.append("\\n");
          break;
        case '\r':
          sb.append("\\r");
          break;
        case '\t':
          sb.append("\\t");
          break;
        case '\b':
          sb.append("\\b");
          break;
        case '\f':
          sb.append("\\f");
          break;
        default:
          if (c < 0x20) {
            sb.append(String.format(Locale.ROOT, "\\u%04x", (int) c));
          } else {
            sb.append(c);
          }
      }
    }
    sb.append('"');
  }

  // ------------------------------------------------------------------ parser

  private static final int MAX_DEPTH = 256;

  private static final class Parser {
    final String s;
    int pos;

    Parser(String s) {
      this.s = s;
    }

    ParseException error(String what) {
      return new ParseException("invalid JSON at offset " + pos + ": " + what);
    }

    void skipWhitespace() {
      while (pos < s.length()) {
        char c = s.charAt(pos);
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') pos++;
        else break;
      }
    }

    Object readValue(int depth) {
      if (depth > MAX_DEPTH) throw error("nesting deeper than " + MAX_DEPTH);
      if (pos >= s.length()) throw error("unexpected end of input");
      char c = s.charAt(pos);
      switch (c) {
        case '{':
          return readObject(depth);
        case '[':
          return readArray(depth);
        case '"':
          return readString();
        case 't':
          expectWord("true");
          return Boolean.TRUE;
        case 'f':
          expectWord("false");
          return Boolean.FALSE;
        case 'n':
          expectWord("null");
          return null;
        default:
          if (c == '-' || (c >= '0' && c <= '9')) return readNumber();
          throw error("unexpected character '" + c + "'");
      }
    }

    void expectWord(String word) {
      if (!s.startsWith(word, pos)) throw error("expected '" + word + "'");
      pos += word.length();
    }

    Map<String, Object> readObject(int depth) {
      Map<String, Object> m = new LinkedHashMap<>();
      pos++; // {
      skipWhitespace();
      if (pos < s.length() && s.charAt(pos) == '}') {
        pos++;
        return m;
      }
      while (true) {
        skipWhitespace();
        if (pos >= s.length() || s.charAt(pos) != '"') throw error("expected a string key");
        String key = readString();
        if (m.containsKey(key)) throw error("duplicate key \"" + key + "\"");
        skipWhitespace();
        if (pos >= s.length() || s.charAt(pos) != ':') throw error("expected ':'");
        pos++;
        skipWhitespace();
        m.put(key, readValue(depth + 1));
        skipWhitespace();
        if (pos >= s.length()) throw error("unterminated object");
        char c = s.charAt(pos++);
        if (c == '}') return m;
        if (c != ',') {
          pos--;
          throw error("expected ',' or '}'");
        }
      }
    }

    List<Object> readArray(int depth) {
      List<Object> list = new ArrayList<>();
      pos++; // [
      skipWhitespace();
      if (pos < s.length() && s.charAt(pos) == ']') {
        pos++;
        return list;
      }
      while (true) {
        skipWhitespace();
        list.add(readValue(depth + 1));
        skipWhitespace();
        if (pos >= s.length()) throw error("unterminated array");
        char c = s.charAt(pos++);
        if (c == ']') return list;
        if (c != ',') {
          pos--;
          throw error("expected ',' or ']'");
        }
      }
    }

    String readString() {
      pos++; // opening quote
      StringBuilder sb = new StringBuilder();
      while (true) {
        if (pos >= s.length()) throw error("unterminated string");
        char c = s.charAt(pos++);
        if (c == '"') return sb.toString();
        if (c < 0x20) {
          pos--;
          throw error("control character in string");
        }
        if (c != '\\') {
          sb.append(c);
          continue;
        }
        if (pos >= s.length()) throw error("unterminated escape");
        char e = s.charAt(pos++);
        switch (e) {
          case '"':
            sb.append('"');
            break;
          case '\\':
            sb.append('\\');
            break;
          case '/':
            sb.append('/');
            break;
          case 'b':
            sb.append('\b');
            break;
          case 'f':
            sb.append('\f');
            break;
          case 'n':
            sb.append('\n');
            break;
          case 'r':
            sb.append('\r');
            break;
          case 't':
            sb.append('\t');
            break;
          case 'u':
            if (pos + 4 > s.length()) throw error("short \\u escape");
            int code = 0;
            for (int i = 0; i < 4; i++) {
              int d = Character.digit(s.charAt(pos + i), 16);
              if (d < 0) throw error("bad \\u escape");
              code = code * 16 + d;
            }
            pos += 4;
            sb.append((char) code);
            break;
          default:
            pos--;
            throw error("bad escape '\\" + e + "'");
        }
      }
    }

    Number readNumber() {
      int start = pos;
      if (s.charAt(pos) == '-') pos++;
      if (pos >= s.length()) throw error("bad number");
      if (s.charAt(pos) == '0') {
        pos++;
      } else if (s.charAt(pos) >= '1' && s.charAt(pos) <= '9') {
        while (pos < s.length() && Character.isDigit(s.charAt(pos))) pos++;
      } else {
        throw error("bad number");
      }
      boolean integral = true;
      if (pos < s.length() && s.charAt(pos) == '.') {
        integral = false;
        pos++;
        int digits = pos;
        while (pos < s.length() && Character.isDigit(s.charAt(pos))) pos++;
        if (pos == digits) throw error("digits expected after '.'");
      }
      if (pos < s.length() && (s.charAt(pos) == 'e' || s.charAt(pos) == 'E')) {
        integral = false;
        pos++;
        if (pos < s.length() && (s.charAt(pos) == '+' || s.charAt(pos) == '-')) pos++;
        int digits = pos;
        while (pos < s.length() && Character.isDigit(s.charAt(pos))) pos++;
        if (pos == digits) throw error("digits expected in exponent");
      }
      String text = s.substring(start, pos);
      if (integral) {
        try {
          return Long.parseLong(text);
        } catch (NumberFormatException tooBig) {
          return Double.parseDouble(text);
        }
      }
      return Double.parseDouble(text);
    }
  }
}
