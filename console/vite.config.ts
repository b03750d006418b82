// The console is built once and committed (dist/ is embedded in the herald
// binary), so the output names are fixed and free of hashes: the server
// knows them at compile time and a rebuild with no change is byte-identical
// (`npm run check` relies on that).
import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

const here = (path: string) => fileURLToPath(new URL(path, import.meta.url));

export default defineConfig({
  // Served under /console/ by Herald.
  base: "/console/",
  resolve: {
    alias: {
      // The library from source: no separate build of clients/js.
      "@herald/client/react": here("../clients/js/src/react.tsx"),
      "@herald/client": here("../clients/js/src/index.ts"),
    },
    // The library's own imports (react, socket.io-client) resolve to the
    // console's node_modules, so clients/js needs no install.
    dedupe: ["react", "react-dom", "socket.io-client"],
  },
  esbuild: { jsx: "automatic", legalComments: "none" },
  build: {
    outDir: process.env.CONSOLE_OUT_DIR ?? "dist",
    emptyOutDir: true,
    target: "es2022",
    sourcemap: false,
    modulePreload: false,
    cssCodeSplit: false,
    assetsInlineLimit: 0,
    rollupOptions: {
      output: {
        entryFileNames: "console.js",
        chunkFileNames: "console-[name].js",
        assetFileNames: (asset) => (asset.names?.[0]?.endsWith(".css") ? "console.css" : "[name][extname]"),
      },
    },
  },
});
