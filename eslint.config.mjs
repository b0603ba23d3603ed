import js from '@eslint/js'
import tseslint from 'typescript-eslint'

/** Imports a module of a lower layer may not make (relative to lib/<layer>/). */
const ABOVE_POLICY = ['../adapter/*', '../cli/*', '../metrics/*', '../../plugins/*']

/** One layer's rule: files, why, and the import patterns it may not use. */
function layer(files, why, patterns) {
  return [
    {
      files: Array.isArray(files) ? files : [files],
      rules: {
        'no-restricted-imports': ['error', { patterns: [{ group: patterns, message: why }] }],
      },
    },
  ]
}

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'run/', 'demo/', 'test/milters/', '**/*.js', '**/*.mjs'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/switch-exhaustiveness-check': [
        'error',
        { considerDefaultExhaustiveForUnions: true },
      ],
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
    },
  },
  // Dependencies point one way: plugin -> adapter -> policy -> pool/session -> protocol;
  // CLI -> policy. Each layer may not import the ones above it.
  ...layer('lib/protocol/**/*.ts', 'the codec knows no sockets, sessions or Haraka', [
    'node:net',
    'net',
    'haraka*',
    '../debug/*',
    '../session/*',
    '../transport/*',
    '../pool',
    ...ABOVE_POLICY,
    '../policy/*',
  ]),
  ...layer('lib/debug/**/*.ts', 'the packet trace is a view of the codec: frames in, text out', [
    'node:net',
    'net',
    'haraka*',
    '../session/*',
    '../transport/*',
    '../pool',
    ...ABOVE_POLICY,
    '../policy/*',
  ]),
  ...layer('lib/message/**/*.ts', 'message edits are pure', [
    'node:net',
    'haraka*',
    '../session/*',
    '../transport/*',
    '../pool',
    ...ABOVE_POLICY,
    '../policy/*',
  ]),
  ...layer('lib/transport/**/*.ts', 'transport knows no sessions or policy', [
    'haraka*',
    '../session/*',
    '../pool',
    ...ABOVE_POLICY,
    '../policy/*',
  ]),
  ...layer('lib/session/**/*.ts', 'a session knows no pool, policy or Haraka', [
    'haraka*',
    '../pool',
    ...ABOVE_POLICY,
    '../policy/*',
  ]),
  ...layer(['lib/pool.ts', 'lib/breaker.ts', 'lib/body-spool.ts'], 'below the policy', [
    'haraka*',
    './policy/*',
    './adapter/*',
    './cli/*',
    './metrics/*',
  ]),
  ...layer(
    ['lib/config.ts', 'lib/config-lint.ts', 'lib/config-keys.ts', 'lib/config-docs.ts'],
    'configuration parsing opens no sockets',
    [
      'node:net',
      'haraka*',
      './session/session',
      './session/open',
      './transport/dial',
      './pool',
      './policy/*',
      './adapter/*',
      './cli/*',
      './metrics/*',
    ],
  ),
  ...layer(
    'lib/quarantine/**/*.ts',
    'the quarantine store and its SMTP sender are shared by the plugin and the CLI: no Haraka; of the rest only the one SMTP reply type and formatter',
    [
      'haraka*',
      'Haraka',
      '@haraka/*',
      '../*',
      '!../protocol',
      '../protocol/*',
      '!../protocol/replycode',
      '../../*',
    ],
  ),
  ...layer('lib/policy/**/*.ts', 'the policy knows nothing of Haraka; the CLI uses it too', [
    'haraka*',
    ...ABOVE_POLICY,
  ]),
  ...layer('lib/cli/**/*.ts', 'the CLI answers through the policy, not the Haraka adapter', [
    'haraka*',
    '../adapter/*',
  ]),
  ...layer(
    'lib/metrics/**/*.ts',
    'metrics count policy reports and read the pool; the plugin wires them to Haraka',
    ['haraka*', 'Haraka', '@haraka/*', '../adapter/*', '../cli/*', '../../plugins/*'],
  ),
  ...layer('lib/adapter/**/*.ts', 'the adapter serves the plugin', ['../cli/*']),
  {
    files: ['test/**/*.ts', 'bench/**/*.ts'],
    rules: {
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-non-null-assertion': 'off',
    },
  },
)
