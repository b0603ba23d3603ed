// The fake milter now lives in test/helpers/fake-milter.ts, shared with bench/.
export * from '../../helpers/fake-milter'
