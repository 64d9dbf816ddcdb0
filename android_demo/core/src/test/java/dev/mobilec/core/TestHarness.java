package dev.mobilec.core;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/** A tiny dependency-free test runner: named checks, a summary line, a non-zero exit on failure. */
final class TestHarness {
  interface Body {
    void run() throws Exception;
  }

  private final List<String> names = new ArrayList<>();
  private final List<Body> bodies = new ArrayList<>();

  void test(String name, Body body) {
    names.add(name);
    bodies.add(body);
  }

  /** Runs every test; prints "ok"/"FAIL" per test and "N passed, M failed"; returns the failures. */
  int runAll() {
    int passed = 0;
    int failed = 0;
    for (int i = 0; i < names.size(); i++) {
      try {
        bodies.get(i).run();
        passed++;
        System.out.println("ok   " + names.get(i));
      } catch (Throwable t) {
        failed++;
        System.out.println("FAIL " + names.get(i) + ": " + t);
        for (StackTraceElement e : t.getStackTrace()) {
          if (e.getClassName().startsWith("dev.mobilec")) System.out.println("       at " + e);
        }
      }
    }
    System.out.println(passed + " passed, " + failed + " failed");
    return failed;
  }

  // ----------------------------------------------------------------- assertions

  static void check(boolean cond, String what) {
    if (!cond) throw new AssertionError(what);
  }

  static void eq(Object expected, Object actual) {
    if (expected == null ? actual != null : !expected.equals(actual)) {
      throw new AssertionError("expected <" + expected + "> but was <" + actual + ">");
    }
  }

  static void near(double expected, double actual, double tol) {
    if (!(Math.abs(expected - actual) <= tol)) {
      throw new AssertionError("expected " + expected + " ± " + tol + " but was " + actual);
    }
  }

  static void arrayEq(long[] expected, long[] actual) {
    if (!Arrays.equals(expected, actual)) {
      throw new AssertionError("expected " + Arrays.toString(expected) + " but was " + Arrays.toString(actual));
    }
  }

  static void arrayEq(int[] expected, int[] actual) {
    if (!Arrays.equals(expected, actual)) {
      throw new AssertionError("expected " + Arrays.toString(expected) + " but was " + Arrays.toString(actual));
    }
  }

  /** Asserts that {@code body} throws {@code type} with a message containing {@code fragment}. */
  static <T extends Throwable> T throwsWith(Class<T> type, String fragment, Body body) {
    try {
      body.run();
    } catch (Throwable t) {
      if (!type.isInstance(t)) {
        throw new AssertionError("expected " + type.getSimpleName() + " but got " + t, t);
      }
      String msg = String.valueOf(t.getMessage());
      if (!msg.contains(fragment)) {
        throw new AssertionError("message <" + msg + "> lacks <" + fragment + ">");
      }
      return type.cast(t);
    }
    throw new AssertionError("expected " + type.getSimpleName() + " containing <" + fragment + ">, nothing thrown");
  }
}
