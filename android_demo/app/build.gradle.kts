plugins {
    id("com.android.application")
}

android {
    namespace = "dev.mobilec.demo"
    compileSdk = 36

    defaultConfig {
        applicationId = "dev.mobilec.demo"
        minSdk = 24 // LiteRT 2.3 needs 24 (ExecuTorch 23)
        targetSdk = 36
        versionCode = 1
        versionName = "0.1.0"
        // The ExecuTorch AAR ships native code for these two ABIs only.
        ndk { abiFilters += listOf("arm64-v8a", "x86_64") }
    }

    buildTypes {
        debug {
            // `adb shell run-as dev.mobilec.demo cat files/results.json` needs a debuggable build.
            isDebuggable = true
        }
        release {
            isMinifyEnabled = false // keeps the JNI classes of both runtimes intact
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    androidResources {
        // store models uncompressed in the APK, so copying them out of assets is a plain read
        noCompress += listOf("pte", "tflite")
    }

    packaging {
        jniLibs {
            useLegacyPackaging = false
            // both runtimes may bring the NDK's libc++ / fbjni; keep one copy
            pickFirsts += listOf("**/libc++_shared.so", "**/libfbjni.so")
        }
    }
}

dependencies {
    implementation(project(":core"))
    // Same release as the Python executorch==1.5.1 that writes the .pte files (Maven Central).
    implementation("org.pytorch:executorch-android:1.5.1")
    // Same release as the Python ai-edge-litert==2.3.0 used for host verification (Google Maven).
    implementation("com.google.ai.edge.litert:litert:2.3.0")
}
